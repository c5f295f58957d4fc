"""LuCaFoundProcessor: CT volumes and report text in one call, saved and reloaded through AutoProcessor."""

import pytest
import torch
from transformers import AutoProcessor

from datasets_scripts.phantoms import generate_chest_phantom
from modeling_lucafound.image_processing_lucafound import LuCaFoundImageProcessor
from modeling_lucafound.processing_lucafound import LuCaFoundProcessor
from modeling_lucafound.report_tokenizer import train_report_tokenizer

REPORTS = [
    "Spiculated solid mass in the right upper lobe measuring 32 mm, abutting the pleura.",
    "Ground-glass nodule in the left lower lobe measuring 9 mm. No lymphadenopathy.",
    "No pulmonary nodules. The lungs are clear.",
]


@pytest.fixture(scope="module")
def processor():
    tokenizer = train_report_tokenizer(REPORTS * 3, vocab_size=200)
    return LuCaFoundProcessor(image_processor=LuCaFoundImageProcessor(output_size=[16, 32, 32]), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def phantom():
    return generate_chest_phantom(seed=4, shape=(24, 64, 64))


def test_report_tokenizer_is_trained_offline_with_bert_special_tokens(processor):
    tokenizer = processor.tokenizer
    assert tokenizer.pad_token_id == 0
    encoded = tokenizer("spiculated mass in the right upper lobe")
    assert encoded["input_ids"][0] == tokenizer.cls_token_id and encoded["input_ids"][-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in encoded["input_ids"]


def test_processor_encodes_volume_and_report_together(processor, phantom):
    batch = processor(images=phantom.hu, spacing=phantom.spacing, text=[phantom.report], return_crop_info=True)
    assert batch["pixel_values"].shape == (1, 1, 16, 32, 32)
    assert 0.0 <= float(batch["pixel_values"].min()) and float(batch["pixel_values"].max()) <= 1.0
    assert batch["input_ids"].shape[0] == 1
    assert batch["crop_info"][0]["bbox"][0][0] < batch["crop_info"][0]["bbox"][0][1]


def test_processor_needs_images_or_text(processor):
    with pytest.raises(ValueError, match="images"):
        processor()


def test_processor_reloads_through_autoprocessor_with_remote_code(processor, phantom, tmp_path):
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    original = processor(images=phantom.hu, spacing=phantom.spacing, text=REPORTS)
    again = reloaded(images=phantom.hu, spacing=phantom.spacing, text=REPORTS)
    assert torch.equal(original["input_ids"], again["input_ids"])
    assert torch.equal(original["pixel_values"], again["pixel_values"])
