"""Convert the released LuCaFound checkpoint (torchvision `swin3d_b` state dict without `head.*`) into a model folder.

The checkpoint is read with `torch.load(weights_only=True)` or safetensors, never unrestricted pickle. Parameter
names are torchvision's, which `LuCaFoundVisionModel` uses as they are; every key must match, or the conversion
stops and names the keys that do not.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .configuration_lucafound import LuCaFoundVisionConfig
from .errors import CheckpointKeyMismatchError, LuCaFoundInputError

# Keys a torchvision model carries that the feature extractor does not: the Kinetics classification head.
DROPPED_PREFIXES = ("head.",)
# A wrapper prefix added by DistributedDataParallel / torch.compile when a whole model was saved.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointReadError(LuCaFoundInputError):
    """A checkpoint file that is missing, unreadable, or not a plain tensor state dict."""


def load_torchvision_state_dict(checkpoint_path):
    """Read a torchvision-format state dict from `.pt`/`.pth`/`.bin` (weights only) or `.safetensors`."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise CheckpointReadError(f"Checkpoint {path} does not exist. Give the path of the released model.pt.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable file, or a pickle that needs code execution
        raise CheckpointReadError(
            f"Could not read {path} as a weights-only checkpoint ({type(error).__name__}: {error}). LuCaFound reads "
            "checkpoints with torch.load(weights_only=True) or safetensors and never runs pickled code; re-save the "
            "model's state_dict() with torch.save or safetensors."
        ) from error
    for wrapper_key in ("state_dict", "model"):
        if isinstance(state_dict, dict) and set(state_dict) == {wrapper_key}:
            state_dict = state_dict[wrapper_key]
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise CheckpointReadError(f"{path} does not hold a state dict of tensors (name -> tensor).")
    return state_dict


def map_torchvision_keys(state_dict):
    """torchvision key -> LuCaFoundVisionModel key: wrapper prefixes removed, the classification head dropped."""
    mapped = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(DROPPED_PREFIXES):
            continue
        mapped[key] = value
    return mapped


def infer_vision_config(state_dict, window_size=(8, 7, 7), **overrides):
    """The Swin3D architecture that produced `state_dict` (embed dim, patch, depths, heads, MLP ratio, channels).

    The window size cannot be read off the weights uniquely; it defaults to Swin3D's (8, 7, 7) and is checked
    against the size of the relative-position tables.
    """
    if "patch_embed.proj.weight" not in state_dict:
        raise CheckpointKeyMismatchError(
            "The checkpoint has no `patch_embed.proj.weight`: it is not a torchvision Swin3D state dict."
        )
    patch_weight = state_dict["patch_embed.proj.weight"]
    embed_dim, in_channels = patch_weight.shape[:2]
    patch_size = list(patch_weight.shape[2:])
    blocks_per_stage = {}
    heads_per_stage = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"features\.(\d+)\.(\d+)\.attn\.relative_position_bias_table", key)
        if match:
            feature_index, block_index = int(match.group(1)), int(match.group(2))
            blocks_per_stage[feature_index] = max(blocks_per_stage.get(feature_index, 0), block_index + 1)
            heads_per_stage[feature_index] = value.shape[1]
            table_size = value.shape[0]
    stage_indices = sorted(blocks_per_stage)
    if not stage_indices or stage_indices != list(range(0, 2 * len(stage_indices), 2)):
        raise CheckpointKeyMismatchError(
            f"Could not find the Swin3D stages in the checkpoint (blocks found under features.{stage_indices})."
        )
    expected_table = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
    if table_size != expected_table:
        raise CheckpointKeyMismatchError(
            f"The relative-position tables have {table_size} rows, but window size {tuple(window_size)} needs "
            f"{expected_table}. Pass the window size the checkpoint was trained with."
        )
    mlp_hidden = state_dict["features.0.0.mlp.0.weight"].shape[0]
    options = dict(
        patch_size=patch_size,
        embed_dim=int(embed_dim),
        depths=[blocks_per_stage[index] for index in stage_indices],
        num_heads=[int(heads_per_stage[index]) for index in stage_indices],
        window_size=list(window_size),
        mlp_ratio=mlp_hidden / embed_dim,
        in_channels=int(in_channels),
    )
    options.update(overrides)
    return LuCaFoundVisionConfig(**options)


def vision_model_from_torchvision_state_dict(state_dict, config=None):
    """A `LuCaFoundVisionModel` holding exactly the weights of a torchvision Swin3D state dict.

    Raises CheckpointKeyMismatchError naming every missing and unexpected key, or a shape that differs.
    """
    from .modeling_lucafound import LuCaFoundVisionModel

    state_dict = map_torchvision_keys(state_dict)
    config = config or infer_vision_config(state_dict)
    model = LuCaFoundVisionModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                problems.append(f"{label} keys: {shown}")
        raise CheckpointKeyMismatchError(
            "The checkpoint does not match the LuCaFound Swin3D encoder; " + "; ".join(problems)
            + ". Expected a torchvision swin3d state dict (head removed), as in the released model.pt."
        )
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in state_dict.items()}, strict=True)
    return model.eval()


def convert_torchvision_checkpoint(checkpoint_path, output_dir, window_size=(8, 7, 7), overwrite=False,
                                   save_image_processor=True):
    """Convert a released checkpoint into a folder that `AutoModel.from_pretrained(dir, trust_remote_code=True)` loads.

    The folder is written next to its final place and renamed into it only when complete, so an interrupted
    conversion never leaves a folder that looks finished. Returns the output folder.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise LuCaFoundInputError(f"{output_dir} exists and is not empty; choose another folder or pass overwrite.")
    state_dict = map_torchvision_keys(load_torchvision_state_dict(checkpoint_path))
    model = vision_model_from_torchvision_state_dict(state_dict, infer_vision_config(state_dict, window_size))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        if save_image_processor:
            from .image_processing_lucafound import LuCaFoundImageProcessor

            LuCaFoundImageProcessor(output_size=list(model.config.image_size)).save_pretrained(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


__all__ = [
    "CheckpointReadError",
    "load_torchvision_state_dict",
    "map_torchvision_keys",
    "infer_vision_config",
    "vision_model_from_torchvision_state_dict",
    "convert_torchvision_checkpoint",
]
