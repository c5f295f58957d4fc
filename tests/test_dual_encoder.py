"""The CT-report dual encoder: embeddings, logits, CLIP/SigLIP losses, clamped temperature, tower pairing, pooling."""

import math

import pytest
import torch
from transformers import BertConfig, BertModel

from modeling_lucafound.losses import clip_contrastive_loss, siglip_contrastive_loss
from modeling_lucafound.modeling_lucafound import LuCaFoundModel, LuCaFoundTextModel, LuCaFoundVisionModel
from tiny_models import TINY_VISION, tiny_batch, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LuCaFoundModel(tiny_config()).eval()


def test_forward_returns_normalised_embeddings_and_symmetric_logits(model):
    with torch.no_grad():
        output = model(**tiny_batch(), return_loss=True)
    assert output.image_embeds.shape == output.text_embeds.shape == (3, 16)
    torch.testing.assert_close(output.image_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(output.logits_per_image, output.logits_per_text.t())
    expected = clip_contrastive_loss(output.image_embeds, output.text_embeds, model.logit_scale)
    torch.testing.assert_close(output.loss, expected)


def test_loss_is_only_computed_when_asked(model):
    with torch.no_grad():
        assert model(**tiny_batch()).loss is None


def test_features_are_the_unnormalised_projections(model):
    batch = tiny_batch()
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=batch["pixel_values"])
        text_features = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        output = model(**batch)
    torch.testing.assert_close(torch.nn.functional.normalize(image_features, dim=-1), output.image_embeds)
    torch.testing.assert_close(torch.nn.functional.normalize(text_features, dim=-1), output.text_embeds)


def test_logit_scale_is_clamped_to_100():
    model = LuCaFoundModel(tiny_config(logit_scale_init_value=math.log(1000.0))).eval()
    with torch.no_grad():
        output = model(**tiny_batch())
    cosine = output.text_embeds @ output.image_embeds.t()
    torch.testing.assert_close(output.logits_per_text, 100.0 * cosine)


def test_siglip_loss_and_bias_are_used_when_configured():
    model = LuCaFoundModel(tiny_config(contrastive_loss="siglip")).eval()
    with torch.no_grad():
        output = model(**tiny_batch(), return_loss=True)
    cosine = output.text_embeds @ output.image_embeds.t()
    torch.testing.assert_close(output.logits_per_text, model.logit_scale.exp() * cosine + model.logit_bias)
    expected = siglip_contrastive_loss(output.image_embeds, output.text_embeds, model.logit_scale, model.logit_bias)
    torch.testing.assert_close(output.loss, expected)


def test_training_step_updates_both_towers_and_the_temperature():
    torch.manual_seed(0)
    model = LuCaFoundModel(tiny_config()).train()
    model(**tiny_batch(), return_loss=True).loss.backward()
    assert model.vision_model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.text_model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert model.logit_scale.grad is not None


def test_mean_pooling_ignores_padding_tokens():
    config = tiny_config()
    config.text_config.pooling = "mean"
    text_model = LuCaFoundTextModel(config.text_config).eval()
    input_ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0]])
    with torch.no_grad():
        padded = text_model(input_ids=input_ids, attention_mask=(input_ids != 0).long()).pooler_output
        unpadded = text_model(input_ids=input_ids[:, :5], attention_mask=torch.ones(1, 5, dtype=torch.long)).pooler_output
    torch.testing.assert_close(padded, unpadded, rtol=1e-5, atol=1e-5)


def test_from_vision_text_pretrained_pairs_an_encoder_with_any_hub_text_encoder(tmp_path):
    from modeling_lucafound.configuration_lucafound import LuCaFoundVisionConfig

    vision = LuCaFoundVisionModel(LuCaFoundVisionConfig(**TINY_VISION)).eval()
    text = BertModel(BertConfig(vocab_size=120, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=48)).eval()
    vision.save_pretrained(tmp_path / "vision")
    text.save_pretrained(tmp_path / "text")
    model = LuCaFoundModel.from_vision_text_pretrained(str(tmp_path / "vision"), str(tmp_path / "text")).eval()
    assert model.config.text_config.model_type == "bert"
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            model.vision_model(pixel_values=batch["pixel_values"]).pooler_output,
            vision(pixel_values=batch["pixel_values"]).pooler_output,
        )
        output = model(**batch, return_loss=True)
    assert output.text_embeds.shape == (3, model.config.projection_dim)
    assert torch.isfinite(output.loss)
    model.save_pretrained(tmp_path / "pair")
    reloaded = LuCaFoundModel.from_pretrained(tmp_path / "pair").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits_per_image, output.logits_per_image)
