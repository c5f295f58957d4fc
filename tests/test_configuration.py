"""Configs: Swin3D-B / BERT-base defaults, round trips through config.json, and validation naming the parameter."""

import pytest
import torch

from modeling_lucafound.configuration_lucafound import (
    LuCaFoundConfig,
    LuCaFoundTextConfig,
    LuCaFoundVisionConfig,
    lucafound_config_for_size,
)
from modeling_lucafound.modeling_lucafound import LuCaFoundVisionModel, shifted_window_geometry


def test_vision_defaults_are_swin3d_b_over_the_lung_crop():
    config = LuCaFoundVisionConfig()
    assert config.patch_size == [2, 4, 4]
    assert config.embed_dim == 128
    assert config.depths == [2, 2, 18, 2]
    assert config.num_heads == [4, 8, 16, 32]
    assert config.window_size == [8, 7, 7]
    assert config.mlp_ratio == 4.0
    assert config.stochastic_depth_prob == 0.1
    assert config.in_channels == 3
    assert config.image_size == [48, 256, 256]
    assert config.hidden_size == 1024


def test_text_defaults_are_bert_base():
    config = LuCaFoundTextConfig()
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (30522, 768, 12)
    assert (config.num_attention_heads, config.intermediate_size, config.pooling) == (12, 3072, "cls")


def test_dual_encoder_config_accepts_dicts_and_config_objects():
    from_dicts = LuCaFoundConfig(vision_config={"embed_dim": 16, "num_heads": [1, 2, 4, 8]}, text_config={"hidden_size": 64, "num_attention_heads": 2})
    from_objects = LuCaFoundConfig(
        vision_config=LuCaFoundVisionConfig(embed_dim=16, num_heads=[1, 2, 4, 8]),
        text_config=LuCaFoundTextConfig(hidden_size=64, num_attention_heads=2),
    )
    assert isinstance(from_dicts.vision_config, LuCaFoundVisionConfig)
    assert isinstance(from_dicts.text_config, LuCaFoundTextConfig)
    assert from_dicts.vision_config.to_dict() == from_objects.vision_config.to_dict()
    assert from_dicts.text_config.hidden_size == from_objects.text_config.hidden_size == 64


def test_dual_encoder_config_round_trips_through_a_folder(tmp_path):
    config = LuCaFoundConfig(projection_dim=256, contrastive_loss="siglip", vision_config={"window_size": [4, 7, 7]})
    config.save_pretrained(tmp_path)
    loaded = LuCaFoundConfig.from_pretrained(tmp_path)
    assert loaded.projection_dim == 256
    assert loaded.contrastive_loss == "siglip"
    assert loaded.vision_config.window_size == [4, 7, 7]
    assert isinstance(loaded.text_config, LuCaFoundTextConfig)


def test_a_hub_text_encoder_config_keeps_its_own_model_type(tmp_path):
    config = LuCaFoundConfig(text_config={"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2})
    config.save_pretrained(tmp_path)
    loaded = LuCaFoundConfig.from_pretrained(tmp_path)
    assert loaded.text_config.model_type == "bert"
    assert loaded.text_config.hidden_size == 32


@pytest.mark.parametrize(
    "options, parameter",
    [
        (dict(embed_dim=30), "embed_dim"),
        (dict(depths=[2, 2], num_heads=[4, 8, 16]), "depths"),
        (dict(patch_size=[2, 0, 4]), "patch_size"),
        (dict(window_size=[8, -7, 7]), "window_size"),
        (dict(image_size=[48, 256]), "image_size"),
        (dict(depths=[2, 0, 2, 2]), "depths"),
        (dict(mlp_ratio=0), "mlp_ratio"),
        (dict(stochastic_depth_prob=1.5), "stochastic_depth_prob"),
    ],
)
def test_invalid_vision_values_raise_value_error_naming_the_parameter(options, parameter):
    with pytest.raises(ValueError, match=parameter):
        LuCaFoundVisionConfig(**options)


@pytest.mark.parametrize(
    "options, parameter",
    [
        (dict(hidden_size=100, num_attention_heads=12), "hidden_size"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(vocab_size=-5), "vocab_size"),
        (dict(pooling="max"), "pooling"),
    ],
)
def test_invalid_text_values_raise_value_error_naming_the_parameter(options, parameter):
    with pytest.raises(ValueError, match=parameter):
        LuCaFoundTextConfig(**options)


def test_unknown_contrastive_loss_is_rejected():
    with pytest.raises(ValueError, match="contrastive_loss"):
        LuCaFoundConfig(contrastive_loss="triplet")


def test_zero_projection_dim_is_rejected():
    with pytest.raises(ValueError, match="projection_dim"):
        LuCaFoundConfig(projection_dim=0)


def test_named_sizes_build_valid_configs():
    tiny = lucafound_config_for_size("tiny", vocab_size=500)
    assert tiny.vision_config.embed_dim == 16 and tiny.text_config.vocab_size == 500
    assert lucafound_config_for_size("base").vision_config.depths == [2, 2, 18, 2]
    with pytest.raises(ValueError, match="model_size"):
        lucafound_config_for_size("huge")


@pytest.mark.parametrize("model_size", ["tiny", "small"])
def test_small_sizes_use_windows_that_tile_every_stage_without_padding(model_size):
    vision = lucafound_config_for_size(model_size).vision_config
    encoder = LuCaFoundVisionModel(vision).eval()
    with torch.no_grad():
        outputs = encoder(pixel_values=torch.zeros(1, 1, *vision.image_size), output_hidden_states=True)
    for stage, hidden_state in enumerate(outputs.hidden_states[1:]):
        grid = tuple(hidden_state.shape[1:4])
        geometry = shifted_window_geometry(grid, tuple(vision.window_size), (0, 0, 0))
        assert geometry.padded_size == grid, f"stage {stage} pads {grid} to {geometry.padded_size}"
