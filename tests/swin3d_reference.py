"""Loads the shared torchvision Swin3D reference (config, state dict, inputs, outputs) for parity tests."""

import json
import math

from safetensors.torch import load_file

from modeling_lucafound.configuration_lucafound import LuCaFoundVisionConfig


def reference_vision_config(reference_dir):
    stored = json.loads((reference_dir / "config.json").read_text())
    return LuCaFoundVisionConfig(
        patch_size=stored["patch_size"],
        embed_dim=stored["embed_dim"],
        depths=stored["depths"],
        num_heads=stored["num_heads"],
        window_size=stored["window_size"],
        stochastic_depth_prob=stored["stochastic_depth_prob"],
    )


def reference_tensors(reference_dir):
    """(state dict, inputs as float32, outputs) of the torchvision reference."""
    state_dict = load_file(str(reference_dir / "tiny_swin3d_state_dict.safetensors"))
    inputs = {name: value.float() for name, value in load_file(str(reference_dir / "inputs.safetensors")).items()}
    outputs = load_file(str(reference_dir / "outputs.safetensors"))
    return state_dict, inputs, outputs


def reference_window_attention(attention, normed, geometry):
    """torchvision's shifted-window attention written out step by step, with the parameters of a
    `LuCaFoundWindowAttention`: zero-pad the normed map, roll, partition, qkv on every padded token, one
    (windows, heads, N, N) bias + shift mask, softmax, merge, roll back, crop. Slow; for checking the fast path."""
    import torch
    import torch.nn.functional as F

    from modeling_lucafound.modeling_lucafound import shift_mask_from_regions, shifted_window_regions

    batch, depth, height, width, channels = normed.shape
    pad = [padded - size for padded, size in zip(geometry.padded_size, (depth, height, width))]
    padded = F.pad(normed, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
    shifts = geometry.shift_size
    padded = torch.roll(padded, shifts=tuple(-shift for shift in shifts), dims=(1, 2, 3))
    (wd, wh, ww), window = geometry.windows_per_axis, geometry.window_size
    windows = padded.view(batch, wd, window[0], wh, window[1], ww, window[2], channels)
    windows = windows.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, -1, geometry.window_volume, channels)
    heads, tokens = attention.num_heads, geometry.window_volume
    qkv = F.linear(windows, attention.qkv.weight, attention.qkv.bias)
    query, key, value = qkv.view(batch, -1, tokens, 3, heads, channels // heads).permute(3, 0, 1, 4, 2, 5)
    index = attention.relative_position_index[:tokens, :tokens].reshape(-1)
    bias = attention.relative_position_bias_table[index].view(tokens, tokens, heads).permute(2, 0, 1)
    mask = bias[None] + shift_mask_from_regions(shifted_window_regions(geometry))[:, None]
    scores = query @ key.transpose(-1, -2) / math.sqrt(channels // heads) + mask
    attended = (scores.softmax(-1) @ value).transpose(2, 3).reshape(batch, wd, wh, ww, *window, channels)
    attended = attended.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, *geometry.padded_size, channels)
    attended = torch.roll(attended, shifts=shifts, dims=(1, 2, 3))[:, :depth, :height, :width]
    return F.linear(attended, attention.proj.weight, attention.proj.bias)
