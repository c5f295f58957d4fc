"""`lucafound model-card DIR`: a Hub model card with a YAML header, filled with the folder's own figures, whose
"How to use" code really runs against the folder."""

import json
import re

import pytest
import yaml

from modeling_lucafound import cli
from modeling_lucafound.commands.model_card import count_parameters, render_model_card, write_model_card
from modeling_lucafound.pipeline_lucafound import add_feature_extraction_pipeline
from saved_folders import save_tiny_lucafound_folder, write_chest_file


@pytest.fixture(scope="module")
def card_folder(tmp_path_factory):
    folder = save_tiny_lucafound_folder(tmp_path_factory.mktemp("card") / "tiny-card")
    add_feature_extraction_pipeline(folder)
    (folder / "eval_results.json").write_text(json.dumps(
        {"accuracy": {"value": 0.8125, "ci_lower": 0.6, "ci_upper": 0.95}, "auroc": {"value": 0.875}}))
    (folder / "pretrain_metrics.json").write_text(json.dumps({"eval/i2t_r1": 0.25}))
    (folder / "card_data.json").write_text(json.dumps({"datasets": ["nsclc-radiomics"], "training_data": "Lung1 CTs."}))
    return folder


def header_of(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_header_has_the_hub_fields(card_folder):
    header = header_of(render_model_card(card_folder))
    assert header["library_name"] == "transformers"
    assert header["pipeline_tag"] == "image-feature-extraction"
    assert header["license"] == "apache-2.0"
    assert header["datasets"] == ["nsclc-radiomics"]
    assert {"accuracy", "roc_auc"} <= set(header["metrics"]) and "lung-cancer" in header["tags"]


def test_card_carries_the_folders_own_figures(card_folder):
    text = render_model_card(card_folder)
    assert "| accuracy | 0.812 | 0.600 - 0.950 |" in text
    assert "| eval/i2t_r1 | 0.250 |" in text
    assert "8 x 32 x 32" in text  # the saved image processor's output size
    assert f"{count_parameters(card_folder) / 1e3:.1f} k" in text
    assert "Lung1 CTs." in text and "{{" not in text


def test_card_has_every_section_and_says_it_is_not_a_medical_device(card_folder):
    text = render_model_card(card_folder)
    for heading in ("## Model description", "## Intended use", "## Out-of-scope use", "## How to use",
                    "## Preprocessing", "## Training data", "## Evaluation", "## Limitations and bias", "## Citation"):
        assert heading in text
    assert "not a medical device" in text


def test_how_to_use_code_runs_against_the_saved_folder(card_folder, tmp_path):
    ct_path = write_chest_file(tmp_path / "chest_ct.nii.gz", seed=3)
    text = render_model_card(card_folder, example_ct=str(ct_path))
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        namespace = {}
        exec(compile(block, "model_card", "exec"), namespace)
    assert len(namespace["feature"]) == 32  # the pipeline block's feature: the tiny encoder's width


def test_cli_writes_readme_into_the_folder(card_folder, capsys):
    assert cli.main(["model-card", str(card_folder), "--model-name", "LuCaFound test"]) == 0
    readme = card_folder / "README.md"
    assert readme.read_text().splitlines()[0] == "---"
    assert "# LuCaFound test" in readme.read_text()
    assert capsys.readouterr().out.strip() == str(readme)


def test_card_without_results_says_so_instead_of_inventing_figures(tmp_path):
    folder = save_tiny_lucafound_folder(tmp_path / "bare")
    path = write_model_card(folder)
    assert "No evaluation results in this folder" in path.read_text()
