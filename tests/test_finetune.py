"""train/finetune.py end to end on a tiny random LuCaFound model and a small synthetic cohort (CPU, seconds)."""

import csv
import json

import numpy as np
import pytest
import torch

from modeling_lucafound.modeling_lucafound import LuCaFoundModel
from tiny_models import tiny_config
from train import finetune

SYNTHETIC_OPTIONS = ["--num-samples", "12", "--dataset-option", "phantom_shape=[48,96,96]"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A saved tiny dual encoder (random weights) standing in for a pretraining output folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / "tiny_dual_encoder"
    LuCaFoundModel(tiny_config()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets_cache")


def run_finetune(tiny_base, dataset_cache, output_dir, *options):
    argv = ["--base", str(tiny_base), "--output-dir", str(output_dir), "--cache-dir", str(dataset_cache),
            "--bootstrap-resamples", "50", "--batch-size", "4", *SYNTHETIC_OPTIONS, *options]
    return finetune.main(argv)


@pytest.fixture(scope="module")
def lora_histology_run(tiny_base, dataset_cache, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("lora_histology")
    return run_finetune(tiny_base, dataset_cache, output_dir, "--task", "histology", "--method", "lora", "--epochs", "2",
                        "--save-merged")


def test_lora_run_writes_eval_results_with_confidence_intervals(lora_histology_run):
    results = json.loads((lora_histology_run["output_dir"] and open(f"{lora_histology_run['output_dir']}/eval_results.json")).read())
    assert {"accuracy", "f1_macro", "auroc"} <= set(results)
    for name in ("accuracy", "f1_macro"):
        entry = results[name]
        assert set(entry) >= {"value", "ci_lower", "ci_upper", "confidence"}
        assert entry["ci_lower"] <= entry["value"] <= entry["ci_upper"]
    assert lora_histology_run["eval_results"]["accuracy"]["value"] == results["accuracy"]["value"]


def test_lora_trains_only_adapters_and_the_head(lora_histology_run):
    summary = json.loads(open(f"{lora_histology_run['output_dir']}/run_summary.json").read())
    assert 0 < lora_histology_run["trainable_fraction"] < 1
    assert summary["trainable_parameters"] == lora_histology_run["trainable_parameters"]
    adapter_config = json.loads(open(f"{lora_histology_run['adapter_dir']}/adapter_config.json").read())
    assert adapter_config["modules_to_save"] == ["classifier"]
    assert set(adapter_config["target_modules"]) == set(finetune.DEFAULT_TARGET_MODULES)


def test_lora_adapter_reloads_on_a_trust_remote_code_base_and_reproduces_the_predictions(lora_histology_run, dataset_cache):
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    from train.data import load_dataset_splits

    base = AutoModelForImageClassification.from_pretrained(lora_histology_run["base_model_dir"], trust_remote_code=True)
    model = PeftModel.from_pretrained(base, lora_histology_run["adapter_dir"]).eval()
    test_split = load_dataset_splits(
        "synthetic", num_samples=12, image_size=(8, 32, 32), seed=0, cache_dir=str(dataset_cache),
        phantom_shape=[48, 96, 96],
    )["test"].with_format("numpy")
    pixel_values = torch.as_tensor(np.stack(test_split["pixel_values"]).astype(np.float32))[:, None]
    with torch.no_grad():
        probabilities = model(pixel_values=pixel_values).logits.softmax(-1).numpy()
    with open(f"{lora_histology_run['output_dir']}/predictions.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["patient_id"] for row in rows] == list(test_split["patient_id"])
    saved = np.array([[float(row[key]) for key in row if key.startswith("probability_")] for row in rows])
    np.testing.assert_allclose(probabilities, saved, atol=1e-5)


def test_merged_lora_model_loads_alone_and_matches_the_adapter(lora_histology_run):
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    base = AutoModelForImageClassification.from_pretrained(lora_histology_run["base_model_dir"], trust_remote_code=True)
    adapted = PeftModel.from_pretrained(base, lora_histology_run["adapter_dir"]).eval()
    merged = AutoModelForImageClassification.from_pretrained(lora_histology_run["merged_dir"], trust_remote_code=True).eval()
    pixel_values = torch.rand(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(merged(pixel_values=pixel_values).logits, adapted(pixel_values=pixel_values).logits, atol=1e-5)


def test_lora_run_writes_a_report_with_roc_curves_and_confusion_matrix(lora_histology_run):
    report = lora_histology_run["report"]
    for name in ("roc_curves", "confusion_matrix"):
        with open(report[name], "rb") as stream:
            assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(report["html"], encoding="utf-8").read()
    assert "histology" in page and "auroc" in page and "data:image/png;base64," in page


def test_survival_lora_run_reports_the_c_index_and_kaplan_meier_curves(tiny_base, dataset_cache, tmp_path):
    result = run_finetune(tiny_base, dataset_cache, tmp_path, "--task", "survival", "--epochs", "1")
    assert "c_index" in result["eval_results"]
    adapter_config = json.loads(open(f"{result['adapter_dir']}/adapter_config.json").read())
    assert adapter_config["modules_to_save"] == ["risk_head"]
    with open(result["report"]["kaplan_meier"], "rb") as stream:
        assert stream.read(4) == b"\x89PNG"
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv", newline="")))
    assert {"patient_id", "risk", "duration", "event"} == set(rows[0])


def test_linear_probe_caches_features_and_saves_the_probe(tiny_base, dataset_cache, tmp_path):
    result = run_finetune(tiny_base, dataset_cache, tmp_path, "--task", "egfr", "--method", "linear-probe")
    probe = json.loads(open(result["probe_path"]).read())
    assert probe["kind"] == "logistic" and len(probe["feature_mean"]) == tiny_config().vision_config.hidden_size
    assert sorted(path.name for path in (tmp_path / "features").iterdir()) == ["evaluate.npz", "train.npz"]
    assert result["adapter_dir"] is None


def test_k_fold_evaluates_every_labelled_patient_out_of_fold(tiny_base, dataset_cache, tmp_path):
    result = run_finetune(tiny_base, dataset_cache, tmp_path, "--task", "survival", "--method", "linear-probe",
                          "--k-folds", "3", "--no-report")
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert len(summary["folds"]) == 3
    assert summary["evaluated_patients"] == 12
    held_out = sum(fold["held_out_patients"] for fold in summary["folds"])
    assert held_out == 12
    assert result["evaluated_on"] == "3-fold out-of-fold"


def test_positive_classes_turn_stage_into_a_binary_task(tiny_base, dataset_cache, tmp_path):
    result = run_finetune(tiny_base, dataset_cache, tmp_path, "--task", "stage", "--positive-classes", "III", "IV",
                          "--method", "linear-probe", "--no-report")
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert summary["task"]["class_names"] == ["I/II", "III/IV"]
    assert "auroc" in result["eval_results"]


def test_unknown_label_column_is_a_clear_error(tiny_base, dataset_cache, tmp_path):
    with pytest.raises(finetune.FinetuneOptionError, match="no label column 'smoking'"):
        run_finetune(tiny_base, dataset_cache, tmp_path, "--task", "smoking")


def test_base_that_is_not_a_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(finetune.FinetuneOptionError, match="not a saved model folder"):
        finetune.main(["--base", str(tmp_path), "--output-dir", str(tmp_path / "out")])


def test_balanced_class_weights_are_inverse_class_frequencies():
    weights = finetune.class_weights_for([0, 0, 0, 1, 2, 2], num_classes=4)
    np.testing.assert_allclose(weights.numpy(), [6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2), 0.0])


def test_help_lists_the_documented_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--task", "--dataset", "--data-dir", "--num-samples", "--base", "--method", "--lora-r",
                   "--lora-alpha", "--target-modules", "--epochs", "--output-dir", "--k-folds"):
        assert option in text


def test_full_fine_tuning_trains_every_parameter_and_saves_a_loadable_model(tiny_base, dataset_cache, tmp_path):
    from transformers import AutoModelForImageClassification

    result = run_finetune(tiny_base, dataset_cache, tmp_path, "--task", "egfr", "--method", "full", "--epochs", "1",
                          "--no-report")
    assert result["trainable_fraction"] == 1.0 and result["adapter_dir"] is None
    model = AutoModelForImageClassification.from_pretrained(result["model_dir"], trust_remote_code=True)
    assert model.config.id2label == {0: "wildtype", 1: "mutant"}


def test_best_epoch_keeper_restores_the_parameters_of_the_best_validation_epoch():
    model = torch.nn.Linear(3, 2)
    frozen = torch.nn.Linear(3, 2).requires_grad_(False)
    model.add_module("frozen", frozen)
    keeper = finetune.BestEpochKeeper("auroc")
    snapshots = {}
    for epoch, auroc in enumerate([0.6, 0.9, 0.7], start=1):
        with torch.no_grad():
            model.weight.add_(1.0)
        snapshots[epoch] = model.weight.detach().clone()
        keeper.consider(model, {"eval_auroc": auroc, "eval_loss": 0.5}, float(epoch))
    assert keeper.best_epoch == 2.0 and keeper.best_value == 0.9
    assert keeper.restore(model)
    torch.testing.assert_close(model.weight, snapshots[2], rtol=0, atol=0)


def test_best_epoch_keeper_changes_nothing_when_validation_never_gave_the_metric():
    model = torch.nn.Linear(3, 2)
    before = model.weight.detach().clone()
    keeper = finetune.BestEpochKeeper("c_index")
    keeper.consider(model, {"eval_loss": 1.0}, 1.0)
    keeper.consider(model, {"eval_c_index": float("nan")}, 2.0)
    assert not keeper.restore(model) and keeper.best_epoch is None
    torch.testing.assert_close(model.weight, before, rtol=0, atol=0)


def test_the_evaluated_model_is_the_epoch_that_validation_chose(tiny_base, dataset_cache, tmp_path):
    run_finetune(tiny_base, dataset_cache, tmp_path, "--task", "survival", "--epochs", "3", "--no-report",
                 "--num-samples", "24", "--dataset-option", "validation_fraction=0.3")
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    validation = [entry for entry in summary["history"] if "eval_c_index" in entry]
    assert validation, "the validation split must give a C-index for this check"
    best = max(validation, key=lambda entry: entry["eval_c_index"])
    assert summary["selected_epoch"] == pytest.approx(best["epoch"])
