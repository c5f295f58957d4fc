"""Parity with torchvision's Swin3D: the encoder loaded from the shared reference state dict reproduces every output."""

import pytest
import torch

from modeling_lucafound.modeling_lucafound import LuCaFoundVisionModel
from swin3d_reference import reference_tensors, reference_vision_config

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(swin3d_reference_dir):
    state_dict, inputs, outputs = reference_tensors(swin3d_reference_dir)
    model = LuCaFoundVisionModel(reference_vision_config(swin3d_reference_dir)).eval()
    model.load_state_dict(state_dict, strict=True)
    return model, inputs, outputs


@pytest.mark.parametrize("case", ["full_size", "odd_size", "small"])
def test_pooled_feature_matches_torchvision(reference, case):
    model, inputs, outputs = reference
    with torch.no_grad():
        pooled = model(pixel_values=inputs[case]).pooler_output
    assert pooled.shape == outputs[case].shape
    assert (pooled - outputs[case]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("case", ["full_size", "odd_size", "small"])
def test_every_stage_output_matches_torchvision(reference, case):
    model, inputs, outputs = reference
    with torch.no_grad():
        hidden_states = model(pixel_values=inputs[case], output_hidden_states=True).hidden_states
    stages = hidden_states[1:]  # hidden_states[0] is the patch embedding
    assert len(stages) == 4
    for stage_index, stage_output in enumerate(stages):
        expected = outputs[f"{case}.stage{stage_index}"]
        assert stage_output.shape == expected.shape, f"stage {stage_index}"
        assert (stage_output - expected).abs().max().item() <= TOLERANCE, f"stage {stage_index}"


def test_reference_state_dict_has_exactly_the_encoder_keys(swin3d_reference_dir):
    state_dict, _, _ = reference_tensors(swin3d_reference_dir)
    model = LuCaFoundVisionModel(reference_vision_config(swin3d_reference_dir))
    assert set(model.state_dict()) == set(state_dict)
