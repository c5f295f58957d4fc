"""`lucafound convert`: a torchvision-format checkpoint becomes a folder that AutoModel loads with the same features."""

import json
import pickle

import pytest
import torch
from transformers import AutoModel

from modeling_lucafound import CheckpointKeyMismatchError, LuCaFoundInputError
from modeling_lucafound.cli import main as lucafound
from modeling_lucafound.conversion import (
    CheckpointReadError,
    convert_torchvision_checkpoint,
    infer_vision_config,
    load_torchvision_state_dict,
    vision_model_from_torchvision_state_dict,
)
from swin3d_reference import reference_tensors


@pytest.fixture(scope="module")
def reference(swin3d_reference_dir):
    return reference_tensors(swin3d_reference_dir)


@pytest.fixture()
def released_checkpoint(reference, tmp_path):
    """The reference state dict saved exactly as the released model.pt is: torch.save of a plain state dict."""
    path = tmp_path / "model.pt"
    torch.save(reference[0], path)
    return path


def test_convert_command_writes_a_folder_automodel_loads_with_the_reference_features(reference, released_checkpoint, tmp_path):
    _, inputs, outputs = reference
    output_dir = tmp_path / "lucafound-encoder"
    assert lucafound(["convert", "--checkpoint", str(released_checkpoint), "--output-dir", str(output_dir)]) == 0
    model = AutoModel.from_pretrained(output_dir, trust_remote_code=True).eval()
    assert type(model).__name__ == "LuCaFoundVisionModel"
    with torch.no_grad():
        for case in ("small", "odd_size"):
            pooled = model(pixel_values=inputs[case]).pooler_output
            assert (pooled - outputs[case]).abs().max().item() <= 1e-4
    assert (output_dir / "preprocessor_config.json").is_file()
    assert json.loads((output_dir / "config.json").read_text())["auto_map"]["AutoModel"].endswith("LuCaFoundVisionModel")


def test_architecture_is_read_off_the_checkpoint(reference):
    config = infer_vision_config(reference[0])
    assert (config.embed_dim, config.depths, config.num_heads) == (16, [2, 2, 2, 2], [1, 2, 4, 8])
    assert (config.patch_size, config.mlp_ratio, config.in_channels) == ([2, 4, 4], 4.0, 3)


def test_safetensors_checkpoints_are_read_too(swin3d_reference_dir):
    state_dict = load_torchvision_state_dict(swin3d_reference_dir / "tiny_swin3d_state_dict.safetensors")
    assert "patch_embed.proj.weight" in state_dict


def test_a_classification_head_is_dropped(reference):
    with_head = dict(reference[0])
    with_head["head.weight"] = torch.zeros(400, 128)
    with_head["head.bias"] = torch.zeros(400)
    model = vision_model_from_torchvision_state_dict(with_head)
    assert not any(key.startswith("head.") for key in model.state_dict())


def test_missing_keys_are_named(reference):
    incomplete = dict(reference[0])
    del incomplete["features.2.1.attn.qkv.weight"]
    with pytest.raises(CheckpointKeyMismatchError, match=r"missing keys: features\.2\.1\.attn\.qkv\.weight"):
        vision_model_from_torchvision_state_dict(incomplete)


def test_unexpected_keys_are_named(reference):
    extended = dict(reference[0])
    extended["features.0.0.attn.extra_gate"] = torch.zeros(3)
    with pytest.raises(CheckpointKeyMismatchError, match=r"unexpected keys: features\.0\.0\.attn\.extra_gate"):
        vision_model_from_torchvision_state_dict(extended)


def test_mismatched_shapes_are_named(reference):
    reshaped = dict(reference[0])
    reshaped["norm.weight"] = torch.ones(64)
    with pytest.raises(CheckpointKeyMismatchError, match=r"norm\.weight"):
        vision_model_from_torchvision_state_dict(reshaped)


class Payload:
    """An object whose unpickling would run code: weights-only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_needs_code_execution_is_refused(tmp_path):
    path = tmp_path / "malicious.pt"
    with open(path, "wb") as handle:
        pickle.dump({"patch_embed.proj.weight": Payload()}, handle)
    with pytest.raises(CheckpointReadError, match="weights_only"):
        load_torchvision_state_dict(path)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointReadError, match="does not exist"):
        load_torchvision_state_dict(tmp_path / "model.pt")


def test_convert_command_reports_a_bad_checkpoint_and_exits_non_zero(reference, tmp_path, capsys):
    broken = dict(reference[0])
    del broken["norm.bias"]
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    assert lucafound(["convert", "--checkpoint", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "norm.bias" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_refuses_to_overwrite_a_non_empty_folder(released_checkpoint, tmp_path):
    output_dir = tmp_path / "existing"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("keep me")
    with pytest.raises(LuCaFoundInputError, match="not empty"):
        convert_torchvision_checkpoint(released_checkpoint, output_dir)
    assert (output_dir / "notes.txt").read_text() == "keep me"
