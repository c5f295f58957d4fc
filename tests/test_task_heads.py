"""Task heads: classification by problem type, Cox survival, frozen encoders, training through transformers.Trainer."""

import pytest
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from modeling_lucafound.modeling_lucafound import (
    LuCaFoundForCTClassification,
    LuCaFoundForSurvival,
    LuCaFoundModel,
    LuCaFoundVisionModel,
)
from tiny_models import tiny_config


def volumes(batch_size=4, seed=0):
    return torch.rand(batch_size, 1, 8, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_single_label_classification_uses_cross_entropy():
    model = LuCaFoundForCTClassification(tiny_config(num_labels=3)).eval()
    labels = torch.tensor([0, 2, 1, 2])
    output = model(pixel_values=volumes(), labels=labels)
    assert output.logits.shape == (4, 3)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))


def test_multi_label_classification_uses_binary_cross_entropy():
    model = LuCaFoundForCTClassification(tiny_config(num_labels=4)).eval()
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 4)
    output = model(pixel_values=volumes(), labels=labels)
    assert model.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(output.loss, torch.nn.functional.binary_cross_entropy_with_logits(output.logits, labels))


def test_regression_uses_mean_squared_error():
    model = LuCaFoundForCTClassification(tiny_config(num_labels=1)).eval()
    labels = torch.tensor([0.5, 1.5, 2.5, 3.5])
    output = model(pixel_values=volumes(), labels=labels)
    assert model.config.problem_type == "regression"
    torch.testing.assert_close(output.loss, torch.nn.functional.mse_loss(output.logits.squeeze(-1), labels))


def test_survival_head_outputs_risk_and_cox_loss():
    model = LuCaFoundForSurvival(tiny_config()).eval()
    output = model(pixel_values=volumes(), event=torch.tensor([1, 0, 1, 1]), duration=torch.tensor([3.0, 5.0, 1.0, 8.0]))
    assert output.risk.shape == (4,)
    assert torch.isfinite(output.loss)


def test_survival_batch_without_events_gives_zero_loss():
    model = LuCaFoundForSurvival(tiny_config()).train()
    output = model(pixel_values=volumes(), event=torch.zeros(4), duration=torch.tensor([3.0, 5.0, 1.0, 8.0]))
    assert output.loss.item() == 0.0
    output.loss.backward()


def test_frozen_encoder_trains_only_the_head():
    model = LuCaFoundForCTClassification(tiny_config(num_labels=2, freeze_vision_encoder=True)).train()
    model(pixel_values=volumes(), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    assert all(parameter.grad is None for parameter in model.vision_model.parameters())
    assert model.classifier.weight.grad is not None


def test_head_from_a_pretrained_dual_encoder_folder_keeps_the_encoder_weights(tmp_path):
    torch.manual_seed(1)
    dual = LuCaFoundModel(tiny_config()).eval()
    dual.save_pretrained(tmp_path)
    head = LuCaFoundForSurvival.from_encoder_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            head.vision_model(pixel_values=volumes()).pooler_output,
            dual.vision_model(pixel_values=volumes()).pooler_output,
        )


def test_head_from_a_vision_only_model():
    torch.manual_seed(2)
    encoder = LuCaFoundVisionModel(tiny_config().vision_config).eval()
    head = LuCaFoundForCTClassification.from_encoder_pretrained(encoder, num_labels=5)
    assert head.classifier.out_features == 5
    assert torch.equal(head.vision_model.patch_embed.proj.weight, encoder.patch_embed.proj.weight)


class LabelledVolumes(Dataset):
    def __init__(self, kind, size=8):
        generator = torch.Generator().manual_seed(3)
        self.pixel_values = torch.rand(size, 1, 8, 32, 32, generator=generator)
        self.kind = kind

    def __len__(self):
        return len(self.pixel_values)

    def __getitem__(self, index):
        item = {"pixel_values": self.pixel_values[index]}
        if self.kind == "classification":
            item["labels"] = torch.tensor(index % 2)
        else:
            item["event"] = torch.tensor(float(index % 3 != 0))
            item["duration"] = torch.tensor(float(10 + index))
        return item


@pytest.mark.parametrize("kind", ["classification", "survival"])
def test_heads_train_with_transformers_trainer(tmp_path, kind):
    torch.manual_seed(0)
    model = LuCaFoundForCTClassification(tiny_config(num_labels=2)) if kind == "classification" else LuCaFoundForSurvival(tiny_config())
    before = model.vision_model.patch_embed.proj.weight.detach().clone()
    arguments = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=2,
        learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=LabelledVolumes(kind))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, model.vision_model.patch_embed.proj.weight)


def test_trainer_does_not_pass_loss_kwargs_to_the_heads():
    # With accepts_loss_kwargs = False, Trainer divides the loss by the accumulation steps itself (HF_NOTES.md).
    assert LuCaFoundForCTClassification.accepts_loss_kwargs is False
    assert LuCaFoundForSurvival.accepts_loss_kwargs is False
    assert LuCaFoundModel.accepts_loss_kwargs is False
