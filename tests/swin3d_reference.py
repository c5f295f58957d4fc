"""Loads the shared torchvision Swin3D reference (config, state dict, inputs, outputs) for parity tests."""

import json

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
