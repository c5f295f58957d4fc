"""Zero-shot classification with prompt ensembles (modeling_lucafound.zero_shot) and `lucafound zero-shot`."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_lucafound.cli import main as cli_main
from modeling_lucafound.zero_shot import (
    NEGATIVE_TEMPLATES,
    POSITIVE_TEMPLATES,
    ZeroShotClassifier,
    ZeroShotLabelError,
    ZeroShotModelError,
    fill_templates,
)
from saved_folders import save_tiny_lucafound_folder, write_chest_file

LABELS = ["pleural effusion", "lymphadenopathy", "spiculated mass"]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_tiny_lucafound_folder(tmp_path_factory.mktemp("zero_shot") / "model", with_tokenizer=True)


@pytest.fixture(scope="module")
def classifier(model_folder):
    return ZeroShotClassifier.from_pretrained(model_folder)


def test_templates_are_filled_and_capitalised_like_report_sentences():
    assert fill_templates("pleural effusion", ["No {label}.", "{label} is present."]) == [
        "No pleural effusion.",
        "Pleural effusion is present.",
    ]


def test_a_template_without_a_label_slot_is_refused():
    with pytest.raises(ZeroShotLabelError, match="no '\\{label\\}' slot"):
        fill_templates("nodule", ["There is something."])


def test_the_ensemble_embedding_is_the_renormalised_mean_of_normalised_prompt_embeddings(classifier):
    ensemble = classifier.prompt_ensembles(["pleural effusion"])[0]
    assert len(ensemble.positive_prompts) == len(POSITIVE_TEMPLATES) >= 3
    assert len(ensemble.negative_prompts) == len(NEGATIVE_TEMPLATES) >= 3
    encoding = classifier.tokenizer(ensemble.positive_prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        each = F.normalize(classifier.model.get_text_features(input_ids=encoding["input_ids"],
                                                               attention_mask=encoding["attention_mask"]), dim=-1)
    torch.testing.assert_close(ensemble.positive_embedding, F.normalize(each.mean(0), dim=-1), atol=1e-5, rtol=1e-5)
    assert ensemble.positive_embedding.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_independent_findings_get_a_probability_each(classifier):
    pixel_values = torch.rand(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    results = classifier.classify(labels=LABELS, pixel_values=pixel_values)
    assert len(results) == 2 and list(results[0]) == LABELS
    assert all(0.0 < value < 1.0 for result in results for value in result.values())


def test_independent_probability_is_the_softmax_of_present_and_absent_similarities(classifier):
    pixel_values = torch.rand(1, 1, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    ensemble = classifier.prompt_ensembles(["pleural effusion"])[0]
    image = classifier.image_embeddings(pixel_values=pixel_values)[0]
    scale = classifier.model.clamped_logit_scale().exp().item()
    logits = torch.stack([image @ ensemble.positive_embedding, image @ ensemble.negative_embedding]) * scale
    expected = logits.softmax(0)[0].item()
    result = classifier.classify(labels=["pleural effusion"], pixel_values=pixel_values)[0]
    assert result["pleural effusion"] == pytest.approx(expected, abs=1e-5)


def test_exclusive_labels_form_one_distribution(classifier):
    pixel_values = torch.rand(3, 1, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    results = classifier.classify(labels=["adenocarcinoma", "squamous cell carcinoma"], exclusive=True,
                                  pixel_values=pixel_values)
    for result in results:
        assert sum(result.values()) == pytest.approx(1.0, abs=1e-5)


def test_repeated_labels_are_refused(classifier):
    with pytest.raises(ZeroShotLabelError, match="distinct"):
        classifier.prompt_ensembles(["nodule", "nodule"])


def test_a_task_head_without_a_text_tower_is_refused():
    from modeling_lucafound.modeling_lucafound import LuCaFoundForSurvival
    from tiny_models import tiny_config

    with pytest.raises(ZeroShotModelError, match="dual encoder"):
        ZeroShotClassifier(LuCaFoundForSurvival(tiny_config()), tokenizer=None)


def test_command_scores_a_ct_file_and_writes_json(model_folder, tmp_path, capsys):
    volume = write_chest_file(tmp_path / "chest.nii.gz", seed=3)
    output = tmp_path / "result.json"
    code = cli_main(["zero-shot", str(volume), "--model", str(model_folder), "--labels", *LABELS, "--output", str(output)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text())
    assert list(printed["probabilities"]) == LABELS and printed["mode"] == "independent"


def test_command_gives_the_same_probabilities_as_the_python_api(model_folder, classifier, tmp_path, capsys):
    volume = write_chest_file(tmp_path / "chest.nrrd", seed=4)
    cli_main(["zero-shot", str(volume), "--model", str(model_folder), "--labels", *LABELS, "--exclusive"])
    printed = json.loads(capsys.readouterr().out)["probabilities"]
    expected = classifier.classify(images=str(volume), labels=LABELS, exclusive=True)[0]
    np.testing.assert_allclose([printed[label] for label in LABELS], [expected[label] for label in LABELS], atol=1e-6)


def test_command_on_a_folder_without_a_model_exits_with_a_clear_error(tmp_path, capsys):
    volume = write_chest_file(tmp_path / "chest.nii.gz", seed=5)
    code = cli_main(["zero-shot", str(volume), "--model", str(tmp_path / "missing"), "--labels", "nodule"])
    assert code == 2
    assert "not a saved model folder" in capsys.readouterr().err
