"""The 3D Swin encoder's behaviour: channels, hidden states, window rules, shared masks, checkpointing, init, size."""

import math

import pytest
import torch

from modeling_lucafound import LuCaFoundInputError
from modeling_lucafound import modeling_lucafound as modeling
from modeling_lucafound.configuration_lucafound import LuCaFoundVisionConfig
from modeling_lucafound.modeling_lucafound import LuCaFoundVisionModel, shifted_window_geometry

TINY = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], image_size=[16, 64, 64])


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return LuCaFoundVisionModel(LuCaFoundVisionConfig(**TINY)).eval()


def test_grey_volume_as_one_channel_equals_three_identical_channels(tiny_model):
    grey = torch.rand(2, 1, 16, 64, 64)
    with torch.no_grad():
        one_channel = tiny_model(pixel_values=grey).pooler_output
        three_channels = tiny_model(pixel_values=grey.expand(-1, 3, -1, -1, -1)).pooler_output
    torch.testing.assert_close(one_channel, three_channels, rtol=0, atol=1e-5)


def test_without_the_onednn_operator_inference_falls_back_to_plain_linears_with_the_same_features(tiny_model, monkeypatch):
    volume = torch.rand(1, 1, 16, 64, 64)
    with torch.no_grad():
        fused = tiny_model(pixel_values=volume).pooler_output
        monkeypatch.setattr(modeling, "HAS_ONEDNN_LINEAR_OPERATOR", False)
        plain = tiny_model(pixel_values=volume).pooler_output
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)


def test_pooler_output_is_the_width_of_the_last_stage(tiny_model):
    with torch.no_grad():
        output = tiny_model(pixel_values=torch.rand(1, 1, 16, 64, 64))
    assert output.pooler_output.shape == (1, 128)
    assert output.last_hidden_state.shape == (1, 8, 2, 2, 128)


def test_default_feature_is_1024_dimensional():
    assert LuCaFoundVisionConfig().hidden_size == 1024


def test_hidden_states_hold_patch_embedding_and_each_stage_before_merging(tiny_model):
    with torch.no_grad():
        hidden_states = tiny_model(pixel_values=torch.rand(1, 1, 16, 64, 64), output_hidden_states=True).hidden_states
    assert [tuple(state.shape) for state in hidden_states] == [
        (1, 8, 16, 16, 16),
        (1, 8, 16, 16, 16),
        (1, 8, 8, 8, 32),
        (1, 8, 4, 4, 64),
        (1, 8, 2, 2, 128),
    ]


def test_wrong_channel_count_is_a_clear_input_error(tiny_model):
    with pytest.raises(LuCaFoundInputError, match="channels"):
        tiny_model(pixel_values=torch.rand(1, 2, 16, 64, 64))


def test_pixel_values_without_depth_axis_are_rejected(tiny_model):
    with pytest.raises(LuCaFoundInputError, match="batch, channels, depth, height, width"):
        tiny_model(pixel_values=torch.rand(1, 1, 64, 64))


def test_window_shrinks_to_small_maps_and_shift_is_dropped_there():
    geometry = shifted_window_geometry((8, 25, 23), (8, 7, 7), (4, 3, 3))
    assert geometry.window_size == (8, 7, 7)
    assert geometry.shift_size == (0, 3, 3)  # depth equals the window: no shift along depth
    assert geometry.padded_size == (8, 28, 28)
    small = shifted_window_geometry((10, 4, 3), (8, 7, 7), (4, 3, 3))
    assert small.window_size == (8, 4, 3)
    assert small.shift_size == (4, 0, 0)
    assert small.padded_size == (16, 4, 3)


def test_window_layouts_are_built_once_per_stage_and_reused_across_calls(tiny_model, monkeypatch):
    built = []
    original = modeling.window_layout

    def counting_layout(geometry, feature_size, batch, device):
        built.append(geometry)
        return original(geometry, feature_size, batch, device)

    monkeypatch.setattr(modeling, "window_layout", counting_layout)
    for stage in tiny_model.features:
        if isinstance(stage, modeling.LuCaFoundSwinStage):
            stage._layout_cache.clear()
    volume = torch.rand(1, 1, 16, 64, 64)
    with torch.no_grad():
        tiny_model(pixel_values=volume)
        first_pass = len(built)
        tiny_model(pixel_values=volume)
    # at 16x64x64 stages 0-1 have maps larger than the window in some axis (a plain and a shifted layout); in
    # stages 2-3 the shift is dropped on every axis, so both block kinds share one layout
    assert first_pass == 2 + 2 + 1 + 1
    assert sum(geometry.is_shifted for geometry in built) == 2
    assert len(built) == first_pass


def test_window_layout_round_trips_and_groups_windows_by_shift_mask():
    geometry = shifted_window_geometry((10, 9, 8), (8, 7, 7), (4, 3, 3))
    layout = modeling.window_layout(geometry, (10, 9, 8), 2, "cpu")
    tokens = 2 * 10 * 9 * 8
    assert layout.gather_index.numel() == 2 * geometry.number_of_windows * geometry.window_volume
    assert torch.equal(layout.gather_index[layout.scatter_index], torch.arange(tokens))
    assert layout.padding_rows.numel() == 2 * (math.prod(geometry.padded_size) - 10 * 9 * 8)
    assert sum(layout.group_sizes) == 2 * geometry.number_of_windows
    assert len(layout.group_sizes) == 8  # interior, and last window along any subset of the 3 shifted axes
    assert sum(mask is None for mask in layout.group_masks) == 1


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = LuCaFoundVisionConfig(**TINY, stochastic_depth_prob=0.0)
    model = LuCaFoundVisionModel(config).train()
    volume = torch.rand(2, 1, 16, 64, 64)
    model(pixel_values=volume).pooler_output.square().sum().backward()
    plain = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    model(pixel_values=volume).pooler_output.square().sum().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_stochastic_depth_grows_linearly_over_blocks():
    model = LuCaFoundVisionModel(LuCaFoundVisionConfig(**TINY, stochastic_depth_prob=0.1))
    probabilities = [
        block.stochastic_depth.probability
        for stage in model.features
        if isinstance(stage, modeling.LuCaFoundSwinStage)
        for block in stage
    ]
    assert probabilities[0] == 0.0
    assert probabilities[-1] == pytest.approx(0.1)
    assert probabilities == pytest.approx([0.1 * index / 7 for index in range(8)])


def test_initialisation_follows_torchvision():
    torch.manual_seed(0)
    model = LuCaFoundVisionModel(LuCaFoundVisionConfig(**TINY))
    block = model.features[0][0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.count_nonzero(block.attn.qkv.bias) == 0
    assert block.attn.relative_position_bias_table.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.equal(block.attn.relative_position_index, modeling.relative_position_index((8, 7, 7)))
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))


def test_default_encoder_has_the_parameter_count_of_torchvision_swin3d_b_without_head():
    with torch.device("meta"):
        model = LuCaFoundVisionModel(LuCaFoundVisionConfig())
    assert sum(parameter.numel() for parameter in model.parameters()) == 87_638_984


def test_lora_on_the_patch_embedding_takes_effect_for_grey_and_three_channel_input():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = LuCaFoundVisionModel(LuCaFoundVisionConfig(**TINY)).eval()
    grey = torch.rand(1, 1, 16, 64, 64)
    with torch.no_grad():
        before = model(pixel_values=grey).pooler_output
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=["patch_embed.proj"]))
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)  # LoRA starts as a no-op; give it an update to apply
    with torch.no_grad():
        after_grey = adapted(pixel_values=grey).pooler_output
        after_three = adapted(pixel_values=grey.expand(-1, 3, -1, -1, -1)).pooler_output
    assert (after_grey - before).abs().max() > 1e-3
    torch.testing.assert_close(after_grey, after_three, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shift", [(0, 0, 0), (4, 3, 3)])
def test_window_attention_output_and_gradients_match_the_step_by_step_reference(shift):
    """The fast path (index maps, grouped masks, real tokens only) against torchvision's computation written out,
    in training mode, on a map that needs padding along every axis (and shifting along every axis). In float64,
    so that 1e-5 measures the index and mask logic, not float32 summation order."""
    from swin3d_reference import reference_window_attention

    torch.manual_seed(0)
    config = LuCaFoundVisionConfig(**TINY)
    attention = modeling.LuCaFoundWindowAttention(config, dim=16, num_heads=2).double().train()
    torch.nn.init.normal_(attention.relative_position_bias_table, std=0.5)
    torch.nn.init.normal_(attention.qkv.bias, std=0.5)
    feature_size = (10, 9, 8)
    geometry = shifted_window_geometry(feature_size, (8, 7, 7), shift)
    assert geometry.padded_size == (16, 14, 14) and geometry.shift_size == shift
    layout = modeling.window_layout(geometry, feature_size, 2, "cpu")
    normed = torch.randn(2, *feature_size, 16, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, *feature_size, 16, dtype=torch.float64)
    results = []
    for forward in (lambda: attention(normed, layout), lambda: reference_window_attention(attention, normed, geometry)):
        attention.zero_grad()
        normed.grad = None
        output = forward()
        (output * weights).sum().backward()
        gradients = {name: parameter.grad.clone() for name, parameter in attention.named_parameters()}
        results.append((output.detach(), normed.grad.clone(), gradients))
    (fast, fast_input_grad, fast_grads), (reference, reference_input_grad, reference_grads) = results
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_input_grad, reference_input_grad, rtol=0, atol=1e-5)
    assert set(fast_grads) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table"}
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], reference_grads[name], rtol=0, atol=1e-5, msg=name)


def test_a_new_encoder_keeps_intensity_through_the_patch_embedding_norm(tiny_model):
    # Uniform lung (-850 HU) and solid tumour (40 HU) after the [-1500, 500] window: before the centring bias both
    # became almost the same token (cosine about 0.98) because the LayerNorm removes the scale of c * sum(kernel).
    lung = torch.full((1, 1, 2, 4, 4), 650 / 2000)
    tumour = torch.full((1, 1, 2, 4, 4), 1540 / 2000)
    with torch.no_grad():
        lung_token = tiny_model.patch_embed(lung).flatten()
        tumour_token = tiny_model.patch_embed(tumour).flatten()
    assert torch.nn.functional.cosine_similarity(lung_token, tumour_token, dim=0) < 0.5


def test_the_centring_bias_does_not_touch_loaded_weights(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    reloaded = LuCaFoundVisionModel.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.patch_embed.proj.bias, tiny_model.patch_embed.proj.bias, rtol=0, atol=0)
