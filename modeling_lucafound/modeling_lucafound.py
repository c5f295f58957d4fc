"""LuCaFound models: the 3D Swin CT encoder, the report text encoder, the dual encoder and the task heads.

The CT encoder is torchvision's `swin3d_b` rewritten for transformers: same parameter names (so the released
`model.pt` loads key for key), same window/shift/padding rules (so it gives the released features). Faster at equal
outputs: windows are gathered with precomputed index maps, qkv and the output projection run on real tokens only,
attention runs through `scaled_dot_product_attention` once per group of windows sharing a shift mask, and CPU
inference runs its linears through oneDNN (see BENCHMARKS.md).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.models.bert.configuration_bert import BertConfig
from transformers.models.bert.modeling_bert import BertModel
from transformers.utils import ModelOutput

from .configuration_lucafound import LuCaFoundConfig, LuCaFoundTextConfig, LuCaFoundVisionConfig
from .errors import LuCaFoundInputError
from .losses import clip_contrastive_loss, cox_partial_likelihood_loss, siglip_contrastive_loss

MAXIMUM_LOGIT_SCALE = math.log(100.0)
SHIFTED_WINDOW_MASK_VALUE = -100.0
PIXEL_VALUE_CENTRE = 0.5  # LuCaFoundImageProcessor maps its HU window onto [0, 1]


class PixelValuesShapeError(LuCaFoundInputError):
    """`pixel_values` whose shape or channel count the encoder cannot take."""


# --------------------------------------------------------------------------------------------------------------
# Window geometry: the one place where window shrinking, shifting and padding are decided (torchvision's rules).
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowGeometry:
    """How one feature map of size (D, H, W) is cut into (shifted) attention windows."""

    window_size: tuple  # effective window, shrunk to the map along axes where the map is not larger
    shift_size: tuple  # cyclic shift, 0 along shrunk axes
    padded_size: tuple  # feature map padded up to a window multiple (padded tokens are not masked)

    @property
    def window_volume(self):
        return self.window_size[0] * self.window_size[1] * self.window_size[2]

    @property
    def windows_per_axis(self):
        return tuple(padded // window for padded, window in zip(self.padded_size, self.window_size))

    @property
    def number_of_windows(self):
        depth, height, width = self.windows_per_axis
        return depth * height * width

    @property
    def is_shifted(self):
        return any(self.shift_size)


def shifted_window_geometry(feature_size, window_size, shift_size):
    """Effective window, shift and padding for a feature map, exactly as torchvision's Swin3D decides them.

    Where the map is not larger than the window along an axis, the window shrinks to the map and the shift along
    that axis is 0. The map is then padded at the end of each axis to a multiple of the window.
    """
    window = list(window_size)
    shift = list(shift_size)
    for axis in range(3):
        if feature_size[axis] <= window[axis]:
            window[axis] = feature_size[axis]
            shift[axis] = 0
    padded = tuple(size + (window[axis] - size % window[axis]) % window[axis] for axis, size in enumerate(feature_size))
    return WindowGeometry(tuple(window), tuple(shift), padded)


def shifted_window_regions(geometry):
    """(windows, N) region id of every window token: tokens that the cyclic shift brought together from different
    regions of the map get different ids (torchvision's rule); along unshifted axes there is one region."""
    region = torch.zeros(geometry.padded_size, device="cpu")
    bounds = [
        ((0, -window), (-window, -shift), (-shift, None))
        for window, shift in zip(geometry.window_size, geometry.shift_size)
    ]
    count = 0
    for depth in bounds[0]:
        for height in bounds[1]:
            for width in bounds[2]:
                region[depth[0] : depth[1], height[0] : height[1], width[0] : width[1]] = count
                count += 1
    return partition_windows(region[None, ..., None], geometry).reshape(geometry.number_of_windows, -1)


def shift_mask_from_regions(regions):
    """Additive mask (..., N, N) from region ids (..., N): -100 between tokens of different regions, else 0."""
    return torch.where(regions.unsqueeze(-1) != regions.unsqueeze(-2), SHIFTED_WINDOW_MASK_VALUE, 0.0)


def partition_windows(hidden_states, geometry):
    """(B, D, H, W, C) padded map -> (B, windows, tokens per window, C)."""
    batch, channels = hidden_states.shape[0], hidden_states.shape[-1]
    (depth_windows, height_windows, width_windows), window = geometry.windows_per_axis, geometry.window_size
    hidden_states = hidden_states.view(
        batch, depth_windows, window[0], height_windows, window[1], width_windows, window[2], channels
    )
    hidden_states = hidden_states.permute(0, 1, 3, 5, 2, 4, 6, 7)
    return hidden_states.reshape(batch, geometry.number_of_windows, geometry.window_volume, channels)


@dataclass(frozen=True)
class WindowLayout:
    """Index maps that turn a (B, D, H, W) token map into (shifted, padded) windows and back in one gather each.

    Windows are ordered by group; all windows of a group share one shift mask, so attention runs once per group
    with a broadcast (heads, N, N) mask instead of a (windows, heads, N, N) one.
    """

    geometry: WindowGeometry
    gather_index: torch.Tensor  # (B*windows*N,) row of the flattened (B*D*H*W) map for each window token
    padding_rows: torch.Tensor  # rows in window order that are padding (gathered from row 0, to be overwritten)
    scatter_index: torch.Tensor  # (B*D*H*W,) row in window order of each map token (inverse of gather_index)
    group_sizes: tuple  # windows per group, in window order
    group_masks: tuple  # per group: additive (N, N) shift mask, or None where its windows need none


def window_layout(geometry, feature_size, batch, device):
    """The `WindowLayout` of a (batch, *feature_size) map: padding, cyclic shift and partition as `geometry` says."""
    tokens = math.prod(feature_size)
    source = torch.arange(tokens, device="cpu").view(feature_size)  # index maps are built on CPU, then moved
    pad = [padded - size for padded, size in zip(geometry.padded_size, feature_size)]
    source = F.pad(source, (0, pad[2], 0, pad[1], 0, pad[0]), value=-1)
    if geometry.is_shifted:
        source = torch.roll(source, shifts=tuple(-shift for shift in geometry.shift_size), dims=(0, 1, 2))
    source = partition_windows(source[None, ..., None], geometry).reshape(geometry.number_of_windows, -1)
    patterns, group_of_window = torch.unique(shifted_window_regions(geometry), dim=0, return_inverse=True)
    offsets = torch.arange(batch, device="cpu").view(batch, 1, 1) * tokens
    gathers, group_sizes, group_masks = [], [], []
    for group, pattern in enumerate(patterns):
        windows = source[group_of_window == group]
        gathers.append(torch.where(windows < 0, batch * tokens, windows + offsets).reshape(-1))
        group_sizes.append(batch * windows.shape[0])
        group_masks.append(shift_mask_from_regions(pattern).to(device) if bool((pattern != pattern[0]).any()) else None)
    gather_index = torch.cat(gathers)
    padding = gather_index == batch * tokens
    rows = torch.arange(gather_index.numel(), device="cpu")
    scatter_index = torch.empty(batch * tokens, dtype=torch.long, device="cpu")
    scatter_index[gather_index[~padding]] = rows[~padding]
    return WindowLayout(
        geometry,
        gather_index.masked_fill(padding, 0).to(device),
        rows[padding].to(device),
        scatter_index.to(device),
        tuple(group_sizes),
        tuple(group_masks),
    )


def relative_position_index(window_size):
    """(N, N) index into the relative-position bias table for a full window of N = Wd*Wh*Ww tokens."""
    coordinates = torch.stack(
        torch.meshgrid(*(torch.arange(size) for size in window_size), indexing="ij")
    ).flatten(1)
    relative = (coordinates[:, :, None] - coordinates[:, None, :]).permute(1, 2, 0)
    relative = relative + torch.tensor([size - 1 for size in window_size])
    strides = torch.tensor([(2 * window_size[1] - 1) * (2 * window_size[2] - 1), 2 * window_size[2] - 1, 1])
    return (relative * strides).sum(-1)


def _has_onednn_linear_operator():
    """Whether this torch build has oneDNN's fused linear (a private operator: a future torch may drop or rename it)."""
    try:
        return hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


HAS_ONEDNN_LINEAR_OPERATOR = _has_onednn_linear_operator()


def onednn_linear_applies(module, hidden_states):
    """Whether `module(hidden_states)` may run as oneDNN's linear: a plain, hook-free nn.Linear on CPU in fp32 or bf16,
    without autograd (the op has no backward), in eager mode (inductor cannot lower the op with unpacked weights),
    on a torch build that still has the operator (else the ordinary nn.Linear path runs)."""
    return (
        HAS_ONEDNN_LINEAR_OPERATOR
        and type(module) is nn.Linear
        and not torch.compiler.is_compiling()
        and hidden_states.device.type == "cpu"
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not (module._forward_hooks or module._forward_pre_hooks)
    )


def linear(module, hidden_states, activation=None):
    """`module(hidden_states)`, then GELU if `activation == "gelu"`.

    Inference on CPU runs oneDNN's linear with bias and GELU fused: torch's fp32 linear calls MKL, which on AMD CPUs
    runs at about half of oneDNN's speed (see BENCHMARKS.md). Under CPU autocast it computes in the autocast dtype.
    """
    if onednn_linear_applies(module, hidden_states):
        weight, bias = module.weight, module.bias
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            hidden_states, weight = hidden_states.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if hidden_states.dtype in (torch.float32, torch.bfloat16) and weight.dtype == hidden_states.dtype:
            flat = hidden_states.reshape(-1, hidden_states.shape[-1])
            fused = ("gelu", "none") if activation == "gelu" else ("none", "")
            output = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, fused[0], [], fused[1])
            return output.view(*hidden_states.shape[:-1], output.shape[-1])
    output = module(hidden_states)
    return F.gelu(output) if activation == "gelu" else output


# --------------------------------------------------------------------------------------------------------------
# 3D Swin encoder
# --------------------------------------------------------------------------------------------------------------


class LuCaFoundPatchEmbedding(nn.Module):
    """Non-overlapping 3D patches -> tokens (B, D, H, W, C), with LayerNorm; 1-channel input uses the folded kernel."""

    def __init__(self, config):
        super().__init__()
        self.patch_size = tuple(config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, pixel_values):
        if pixel_values.ndim != 5:
            raise PixelValuesShapeError(
                f"pixel_values must have shape (batch, channels, depth, height, width), got {tuple(pixel_values.shape)}. "
                "Use LuCaFoundImageProcessor to turn a CT into pixel_values."
            )
        channels, kernel_channels = pixel_values.shape[1], self.proj.weight.shape[1]
        if channels not in (1, kernel_channels):
            raise PixelValuesShapeError(
                f"pixel_values has {channels} channels; this encoder takes 1 (grey CT) or {kernel_channels}."
            )
        pad = [(patch - size % patch) % patch for size, patch in zip(pixel_values.shape[2:], self.patch_size)]
        if any(pad):
            pixel_values = F.pad(pixel_values, (0, pad[2], 0, pad[1], 0, pad[0]))
        pixel_values = pixel_values.to(self.proj.weight.dtype)
        if channels == kernel_channels:
            embeddings = self.proj(pixel_values)
        elif type(self.proj) is nn.Conv3d:
            # A grey volume fed as identical channels equals one channel through the channel-summed kernel (3x cheaper).
            folded = self.proj.weight.sum(dim=1, keepdim=True)
            embeddings = F.conv3d(pixel_values, folded, self.proj.bias, stride=self.patch_size)
        else:
            # A wrapped projection (e.g. a PEFT LoRA layer) must run its own forward: feed the identical channels.
            embeddings = self.proj(pixel_values.expand(-1, kernel_channels, -1, -1, -1))
        return self.norm(embeddings.permute(0, 2, 3, 4, 1))


class LuCaFoundWindowAttention(nn.Module):
    """Multi-head self-attention inside (shifted) 3D windows with a learned relative-position bias."""

    is_causal = False

    def __init__(self, config, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = tuple(config.window_size)
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(config.dropout)
        table_size = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1) * (2 * self.window_size[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        # persistent: the released checkpoint stores it (torchvision key `attn.relative_position_index`)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))

    def relative_position_bias(self, window_volume):
        """(heads, N, N) bias; a shrunk window uses the top-left N x N block of the full index (torchvision)."""
        index = self.relative_position_index[:window_volume, :window_volume].reshape(-1)
        return self.relative_position_bias_table.t()[:, index].view(self.num_heads, window_volume, window_volume)

    def forward(self, normed, layout):
        """normed (B, D, H, W, C), the block's norm1 output -> attention output (B, D, H, W, C).

        As torchvision, the map is padded with zeros after the norm, so a padded token's q, k and v are those of a
        zero token: qkv runs on the real tokens and one zero token, the output projection on the real tokens only.
        """
        channels, tokens = normed.shape[-1], layout.geometry.window_volume
        qkv = linear(self.qkv, normed.reshape(-1, channels)).index_select(0, layout.gather_index)
        if layout.padding_rows.numel():
            padding_qkv = linear(self.qkv, normed.new_zeros(1, channels)).to(qkv.dtype)
            qkv = qkv.index_copy_(0, layout.padding_rows, padding_qkv.expand(layout.padding_rows.numel(), -1))
        query, key, value = qkv.view(-1, tokens, 3, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias(tokens).to(query.dtype)
        dropout = self.attention_dropout if self.training else 0.0
        attended, first = [], 0
        for count, shift_mask in zip(layout.group_sizes, layout.group_masks):
            mask = bias if shift_mask is None else bias + shift_mask.to(query.dtype)
            window_slice = slice(first, first + count)
            output = window_attention(query[window_slice], key[window_slice], value[window_slice], mask, dropout)
            attended.append(output.transpose(1, 2).reshape(-1, channels))
            first += count
        attended = attended[0] if len(attended) == 1 else torch.cat(attended)
        attended = attended.index_select(0, layout.scatter_index).view(normed.shape)
        return self.proj_dropout(linear(self.proj, attended))


def window_attention(query, key, value, mask, dropout):
    """softmax(q k^T / sqrt(d) + mask) v for (windows, heads, N, d) with a (heads, N, N) mask shared by the windows."""
    # a 4-D mask: with a 3-D one the CPU dispatcher skips the flash kernel for the 3x slower math path
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask.unsqueeze(0), dropout_p=dropout)


class LuCaFoundStochasticDepth(nn.Module):
    """Drops the residual branch per sample with probability p during training (torchvision "row" mode)."""

    def __init__(self, probability):
        super().__init__()
        self.probability = probability

    def forward(self, hidden_states):
        if not self.training or self.probability == 0.0:
            return hidden_states
        survival = 1.0 - self.probability
        noise = hidden_states.new_empty((hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)).bernoulli_(survival)
        return hidden_states * noise.div_(survival)

    def extra_repr(self):
        return f"probability={self.probability}"


class LuCaFoundSwinBlock(GradientCheckpointingLayer):
    """Pre-norm Swin block: (shifted) window attention and an MLP, each with a stochastic-depth residual."""

    def __init__(self, config, dim, num_heads, shifted, drop_probability):
        super().__init__()
        self.shift_size = tuple(window // 2 if shifted else 0 for window in config.window_size)
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = LuCaFoundWindowAttention(config, dim, num_heads)
        self.stochastic_depth = LuCaFoundStochasticDepth(drop_probability)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        hidden = int(dim * config.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(hidden, dim), nn.Dropout(config.dropout)
        )

    def forward(self, hidden_states, layout):
        """hidden_states (B, D, H, W, C); `layout` places the tokens in this block's (shifted) windows."""
        hidden_states = hidden_states + self.stochastic_depth(self.attn(self.norm1(hidden_states), layout))
        return hidden_states + self.stochastic_depth(self.feed_forward(self.norm2(hidden_states)))

    def feed_forward(self, hidden_states):
        """`self.mlp` (Linear, GELU, Dropout, Linear, Dropout), with the first Linear and the GELU fused if possible."""
        hidden_states = self.mlp[2](linear(self.mlp[0], hidden_states, activation="gelu"))
        return self.mlp[4](linear(self.mlp[3], hidden_states))


class LuCaFoundPatchMerging(nn.Module):
    """2x2 neighbourhoods over height and width -> one token of twice the width (depth is never merged)."""

    def __init__(self, config, dim):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, hidden_states):
        height, width = hidden_states.shape[-3:-1]
        hidden_states = F.pad(hidden_states, (0, 0, 0, width % 2, 0, height % 2))
        merged = torch.cat(
            [
                hidden_states[..., 0::2, 0::2, :],
                hidden_states[..., 1::2, 0::2, :],
                hidden_states[..., 0::2, 1::2, :],
                hidden_states[..., 1::2, 1::2, :],
            ],
            dim=-1,
        )
        return linear(self.reduction, self.norm(merged))


class LuCaFoundSwinStage(nn.ModuleList):
    """The blocks of one stage; their window layouts (geometry, index maps, shift masks) are built once and shared."""

    def __init__(self, config, stage_index, first_block_index, total_blocks):
        dim = config.embed_dim * 2**stage_index
        blocks = []
        for block_index in range(config.depths[stage_index]):
            global_index = first_block_index + block_index
            drop_probability = config.stochastic_depth_prob * global_index / max(total_blocks - 1, 1)
            blocks.append(
                LuCaFoundSwinBlock(config, dim, config.num_heads[stage_index], block_index % 2 == 1, drop_probability)
            )
        super().__init__(blocks)
        self.window_size = tuple(config.window_size)
        self.shift_size = self[1].shift_size if len(self) > 1 else (0, 0, 0)
        self._layout_cache = {}

    def _layouts(self, feature_size, batch, device):
        """(plain, shifted) window layouts for this map, built once per map size, batch and device and reused."""
        key = (feature_size, batch, str(device))
        if key not in self._layout_cache:
            plain = shifted_window_geometry(feature_size, self.window_size, (0, 0, 0))
            shifted = shifted_window_geometry(feature_size, self.window_size, self.shift_size)
            plain_layout = window_layout(plain, feature_size, batch, device)
            shifted_layout = plain_layout if shifted == plain else window_layout(shifted, feature_size, batch, device)
            self._layout_cache = {key: (plain_layout, shifted_layout)}
        return self._layout_cache[key]

    def forward(self, hidden_states):
        plain, shifted = self._layouts(tuple(hidden_states.shape[1:4]), hidden_states.shape[0], hidden_states.device)
        for block in self:
            hidden_states = block(hidden_states, shifted if any(block.shift_size) else plain)
        return hidden_states


# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LuCaFoundOutput(ModelOutput):
    """Output of the dual encoder: contrastive loss, similarity logits, projected embeddings, tower outputs."""

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self):
        return tuple(
            value.to_tuple() if key in ("text_model_output", "vision_model_output") else value
            for key, value in self.items()
        )


@dataclass
class LuCaFoundSurvivalOutput(ModelOutput):
    """Output of the survival head: Cox loss (when event and duration are given) and the log-hazard risk score."""

    loss: torch.FloatTensor | None = None
    risk: torch.FloatTensor | None = None
    hidden_states: tuple | None = None


# --------------------------------------------------------------------------------------------------------------
# Pre-trained base and towers
# --------------------------------------------------------------------------------------------------------------


def align_tensor_storage(model, alignment=64):
    """Copy parameters and buffers that sit at unaligned addresses (memory-mapped safetensors) into fresh memory.

    CPU kernels choose their summation order by the data's alignment, so without this a loaded model can differ
    from the model that was saved in the last bits; with it, loading reproduces the saved model bit for bit.
    """
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device.type == "cpu" and tensor.data_ptr() % alignment:
            tensor.data = tensor.data.clone()
    return model


class LuCaFoundPreTrainedModel(PreTrainedModel):
    """Weight initialisation (as torchvision's Swin3D and BERT) and shared settings of every LuCaFound model."""

    config_class = LuCaFoundConfig
    base_model_prefix = "lucafound"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["LuCaFoundSwinBlock", "BertLayer"]
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader, then every tensor moved to aligned memory (see `align_tensor_storage`)."""
        loaded = super().from_pretrained(*args, **kwargs)
        align_tensor_storage(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, LuCaFoundWindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            init.copy_(module.relative_position_index, relative_position_index(module.window_size))
        elif isinstance(module, nn.Conv3d):
            # PyTorch's default Conv3d initialisation, which torchvision keeps for the patch embedding ...
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * math.prod(module.weight.shape[2:])
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
                # ... plus a bias that centres the [0, 1] pixel values. Without it a uniform patch of any intensity c
                # gives c * sum(kernel) + bias, which the LayerNorm after the patch embedding maps to nearly the same
                # token for lung, tumour and bone: the window's intensity information is lost at initialisation.
                with torch.no_grad():
                    init.copy_(module.bias, module.bias - PIXEL_VALUE_CENTRE * module.weight.sum(dim=(1, 2, 3, 4)))
        elif isinstance(module, nn.Linear):
            # torchvision: truncated normal for every Linear of the Swin3D (for BERT's std 0.02 this equals a normal)
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, LuCaFoundModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            init.constant_(module.logit_bias, self.config.logit_bias_init_value)
        else:
            super()._init_weights(module)


class LuCaFoundVisionModel(LuCaFoundPreTrainedModel):
    """The 3D Swin CT encoder. `pooler_output` is the LuCaFound CT feature (1024-d for Swin3D-B).

    Parameter names equal torchvision's `swin3d_b` without `head.*`, so the released checkpoint loads key for key.
    `last_hidden_state` is the final map after LayerNorm, (B, D, H, W, C); `hidden_states` (on request) holds the
    patch embeddings and the output of every stage before patch merging, each (B, D, H, W, C).
    """

    config_class = LuCaFoundVisionConfig
    input_modalities = ("image",)

    def __init__(self, config):
        super().__init__(config)
        self.patch_embed = LuCaFoundPatchEmbedding(config)
        self.pos_drop = nn.Dropout(config.dropout)
        total_blocks = sum(config.depths)
        features = []
        first_block = 0
        for stage_index, depth in enumerate(config.depths):
            features.append(LuCaFoundSwinStage(config, stage_index, first_block, total_blocks))
            first_block += depth
            if stage_index < len(config.depths) - 1:
                features.append(LuCaFoundPatchMerging(config, config.embed_dim * 2**stage_index))
        self.features = nn.ModuleList(features)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.patch_embed

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        if pixel_values is None:
            raise PixelValuesShapeError("LuCaFoundVisionModel needs pixel_values (batch, channels, depth, height, width).")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = self.pos_drop(self.patch_embed(pixel_values))
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.features:
            hidden_states = layer(hidden_states)
            if output_hidden_states and isinstance(layer, LuCaFoundSwinStage):
                all_hidden_states += (hidden_states,)
        last_hidden_state = self.norm(hidden_states)
        pooled = last_hidden_state.mean(dim=(1, 2, 3))
        if not return_dict:
            return tuple(value for value in (last_hidden_state, pooled, all_hidden_states) if value is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state, pooler_output=pooled, hidden_states=all_hidden_states
        )


def pool_text_hidden_states(last_hidden_state, attention_mask, pooling):
    """Report embedding from token states: the [CLS] token, or the mean over non-padding tokens."""
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if attention_mask is None:
        return last_hidden_state.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class LuCaFoundTextModel(LuCaFoundPreTrainedModel):
    """BERT-style report encoder described by `LuCaFoundTextConfig`; `pooler_output` is CLS or mean pooled."""

    config_class = LuCaFoundTextConfig
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config):
        super().__init__(config)
        bert_options = {key: value for key, value in config.to_dict().items() if key in BertConfig().to_dict()}
        bert_options.pop("model_type", None)
        bert_options.pop("architectures", None)
        bert_config = BertConfig(**bert_options)
        bert_config._attn_implementation = config._attn_implementation
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.bert.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.bert.set_input_embeddings(value)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states=None, output_attentions=None, return_dict=None, **kwargs):
        outputs = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        pooled = pool_text_hidden_states(outputs.last_hidden_state, attention_mask, self.config.pooling)
        output = BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=pooled,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


# --------------------------------------------------------------------------------------------------------------
# Dual encoder
# --------------------------------------------------------------------------------------------------------------


def _build_text_model(text_config):
    # Compare model types, not classes: remote code may load the config and the model from different module copies.
    if text_config.model_type == LuCaFoundTextConfig.model_type:
        return LuCaFoundTextModel._from_config(text_config)
    return AutoModel.from_config(text_config)


class LuCaFoundModel(LuCaFoundPreTrainedModel):
    """CT-report dual encoder aligned by CLIP or SigLIP contrastive learning (local-batch loss in forward)."""

    def __init__(self, config):
        super().__init__(config)
        self.vision_model = LuCaFoundVisionModel._from_config(config.vision_config)
        self.text_model = _build_text_model(config.text_config)
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_embed_dim = config.text_config.hidden_size
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init_value)))
        self.post_init()

    @classmethod
    def from_vision_text_pretrained(cls, vision_model, text_model, **config_kwargs):
        """Pair a CT encoder and any text encoder (objects, local folders or Hub ids) into a new dual encoder.

        The projections and the logit scale are newly initialised; both towers keep their weights.
        """
        if isinstance(vision_model, (str, bytes)) or hasattr(vision_model, "__fspath__"):
            vision_model = LuCaFoundVisionModel.from_pretrained(vision_model)
        if isinstance(text_model, (str, bytes)) or hasattr(text_model, "__fspath__"):
            text_model = AutoModel.from_pretrained(text_model)
        config = LuCaFoundConfig(
            vision_config=vision_model.config.to_dict(), text_config=text_model.config.to_dict(), **config_kwargs
        )
        model = cls(config)
        model.vision_model = vision_model
        model.text_model = text_model
        return model

    def _text_pooled(self, input_ids, attention_mask, token_type_ids=None, output_hidden_states=None):
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        pooled = pool_text_hidden_states(outputs.last_hidden_state, attention_mask, self.config.resolved_text_pooling)
        return pooled, outputs

    def get_text_features(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        """Projected report embeddings (B, projection_dim), not normalised."""
        pooled, _ = self._text_pooled(input_ids, attention_mask, token_type_ids)
        return self.text_projection(pooled)

    def get_image_features(self, pixel_values=None, **kwargs):
        """Projected CT embeddings (B, projection_dim), not normalised."""
        return self.visual_projection(self.vision_model(pixel_values=pixel_values, return_dict=True).pooler_output)

    def clamped_logit_scale(self):
        """Log temperature limited to ln(100), so similarities are never scaled by more than 100."""
        return self.logit_scale.clamp(max=MAXIMUM_LOGIT_SCALE)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None, return_loss=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, output_hidden_states=output_hidden_states, return_dict=True
        )
        text_pooled, text_outputs = self._text_pooled(input_ids, attention_mask, token_type_ids, output_hidden_states)
        image_embeds = F.normalize(self.visual_projection(vision_outputs.pooler_output), dim=-1)
        text_embeds = F.normalize(self.text_projection(text_pooled), dim=-1)
        log_scale = self.clamped_logit_scale()
        logits_per_text = log_scale.exp() * text_embeds @ image_embeds.t()
        if self.config.contrastive_loss == "siglip":
            logits_per_text = logits_per_text + self.logit_bias
        logits_per_image = logits_per_text.t()
        loss = None
        if return_loss:
            if self.config.contrastive_loss == "siglip":
                loss = siglip_contrastive_loss(image_embeds, text_embeds, log_scale, self.logit_bias)
            else:
                loss = clip_contrastive_loss(image_embeds, text_embeds, log_scale)
        output = LuCaFoundOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------------------------
# Task heads
# --------------------------------------------------------------------------------------------------------------


class _LuCaFoundHeadModel(LuCaFoundPreTrainedModel):
    """A CT encoder (frozen or trainable) under a task head; built from a dual-encoder or a vision-only config."""

    def __init__(self, config):
        if config.model_type == LuCaFoundVisionConfig.model_type:
            config = LuCaFoundConfig(vision_config=config.to_dict())
        super().__init__(config)
        self.vision_model = LuCaFoundVisionModel._from_config(config.vision_config)
        self.dropout = nn.Dropout(config.classifier_dropout)

    def freeze_encoder(self, frozen=True):
        """Freeze (or unfreeze) the CT encoder so that only the head trains."""
        self.config.freeze_vision_encoder = frozen
        for parameter in self.vision_model.parameters():
            parameter.requires_grad_(not frozen)

    def get_input_embeddings(self):
        return self.vision_model.get_input_embeddings()

    def encode(self, pixel_values, output_hidden_states=None):
        if self.config.freeze_vision_encoder:
            with torch.no_grad():
                outputs = self.vision_model(pixel_values=pixel_values, output_hidden_states=output_hidden_states)
        else:
            outputs = self.vision_model(pixel_values=pixel_values, output_hidden_states=output_hidden_states)
        return outputs

    @classmethod
    def from_encoder_pretrained(cls, pretrained, **config_overrides):
        """A new head on the CT encoder of `pretrained`: a LuCaFoundVisionModel / LuCaFoundModel, or a folder of either.

        Only the encoder's weights are taken; the head is newly initialised. `config_overrides` set e.g.
        `num_labels`, `problem_type`, `id2label`, `freeze_vision_encoder`.
        """
        if not isinstance(pretrained, PreTrainedModel):
            pretrained = AutoModel.from_pretrained(pretrained, trust_remote_code=True)
        encoder = pretrained.vision_model if hasattr(pretrained, "vision_model") else pretrained
        config = LuCaFoundConfig(vision_config=encoder.config.to_dict(), **config_overrides)
        model = cls(config)
        missing, unexpected = model.vision_model.load_state_dict(encoder.state_dict(), strict=True)
        if config.freeze_vision_encoder:
            model.freeze_encoder(True)
        return model


class LuCaFoundForCTClassification(_LuCaFoundHeadModel):
    """CT encoder + linear classifier for histology, EGFR, stage, ... (single-label, multi-label or regression).

    `problem_type` follows transformers: inferred from `num_labels` and the labels' dtype when not set.
    """

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.classifier = nn.Linear(self.config.vision_config.hidden_size, self.num_labels)
        self.post_init()
        if self.config.freeze_vision_encoder:
            self.freeze_encoder(True)

    def forward(self, pixel_values=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.encode(pixel_values, output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = classification_loss(self.config, logits, labels.to(logits.device))
        if not return_dict:
            return tuple(value for value in (loss, logits, outputs.hidden_states) if value is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def classification_loss(config, logits, labels):
    """Loss by `problem_type` as transformers' sequence/image classifiers choose it (sets it on first use)."""
    num_labels = logits.shape[-1]
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.float().view(-1)) if num_labels == 1 else F.mse_loss(logits, labels.float())
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1).long())
    return F.binary_cross_entropy_with_logits(logits, labels.float())


class LuCaFoundForSurvival(_LuCaFoundHeadModel):
    """CT encoder + linear log-hazard head trained with the negative Cox partial log-likelihood (Breslow ties)."""

    def __init__(self, config):
        super().__init__(config)
        self.risk_head = nn.Linear(self.config.vision_config.hidden_size, 1)
        self.post_init()
        if self.config.freeze_vision_encoder:
            self.freeze_encoder(True)

    def forward(self, pixel_values=None, event=None, duration=None, output_hidden_states=None, return_dict=None,
                **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.encode(pixel_values, output_hidden_states)
        risk = self.risk_head(self.dropout(outputs.pooler_output)).squeeze(-1)
        loss = None
        if (event is None) != (duration is None):
            raise LuCaFoundInputError("LuCaFoundForSurvival needs both `event` and `duration` to compute the Cox loss.")
        if event is not None:
            loss = cox_partial_likelihood_loss(risk, duration, event)
        output = LuCaFoundSurvivalOutput(loss=loss, risk=risk, hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()


LuCaFoundVisionModel.register_for_auto_class("AutoModel")
LuCaFoundTextModel.register_for_auto_class("AutoModel")
LuCaFoundModel.register_for_auto_class("AutoModel")
LuCaFoundForCTClassification.register_for_auto_class("AutoModelForImageClassification")
LuCaFoundForSurvival.register_for_auto_class("AutoModel")

__all__ = [
    "LuCaFoundPreTrainedModel",
    "LuCaFoundVisionModel",
    "LuCaFoundTextModel",
    "LuCaFoundModel",
    "LuCaFoundForCTClassification",
    "LuCaFoundForSurvival",
    "LuCaFoundOutput",
    "LuCaFoundSurvivalOutput",
    "PixelValuesShapeError",
    "shifted_window_geometry",
]
