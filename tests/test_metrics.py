"""Offline evaluate metrics of train/metrics.py: values against scikit-learn and hand-worked examples, CIs."""

import evaluate
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from train.metrics import (
    AUROC,
    Accuracy,
    ConcordanceIndex,
    MacroF1,
    UndefinedMetricError,
    auroc_score,
    bootstrap_confidence_interval,
    classification_metrics_with_intervals,
    concordance_index,
    survival_metrics_with_intervals,
)


def test_accuracy_and_macro_f1_modules_match_scikit_learn():
    predictions, references = [0, 1, 2, 2, 1, 0], [0, 2, 2, 2, 1, 1]
    assert Accuracy().compute(predictions=predictions, references=references) == {"accuracy": 4 / 6}
    expected = f1_score(references, predictions, average="macro")
    assert MacroF1().compute(predictions=predictions, references=references)["f1_macro"] == pytest.approx(expected)


def test_binary_auroc_module_matches_scikit_learn():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 2, 50)
    scores = references * 0.4 + rng.random(50)
    result = AUROC().compute(prediction_scores=scores.tolist(), references=references.tolist())
    assert result["auroc"] == pytest.approx(roc_auc_score(references, scores))


def test_multiclass_auroc_is_one_vs_rest_macro_like_scikit_learn():
    rng = np.random.default_rng(1)
    references = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[references]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = roc_auc_score(references, probabilities, multi_class="ovr", average="macro")
    result = AUROC("multiclass").compute(prediction_scores=probabilities.tolist(), references=references.tolist())
    assert result["auroc"] == pytest.approx(expected)


def test_auroc_with_a_single_class_is_undefined_not_a_number():
    with pytest.raises(UndefinedMetricError):
        auroc_score([1, 1, 1], [0.2, 0.5, 0.9])


def test_concordance_index_on_a_hand_worked_example_with_censoring_and_ties():
    # comparable pairs (i had the event and the shorter time): (0,1) (0,2) (0,3) (2,1) (2,3)
    # risks: 0>1 concordant, 0=2 tie (0.5), 0<3 discordant, 2>1 concordant, 2<3 discordant -> 2.5 / 5
    risk = [3.0, 1.0, 3.0, 4.0]
    duration = [1.0, 5.0, 2.0, 6.0]
    event = [1, 0, 1, 0]
    assert concordance_index(risk, duration, event) == pytest.approx(2.5 / 5)


def test_concordance_index_is_one_for_perfect_ranking_and_zero_for_reversed():
    duration = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    event = np.ones(5, dtype=int)
    assert concordance_index(-duration, duration, event) == 1.0
    assert concordance_index(duration, duration, event) == 0.0


def test_concordance_index_module_accepts_batches_with_events():
    metric = ConcordanceIndex()
    metric.add_batch(predictions=[3.0, 1.0], references=[1.0, 5.0], events=[1, 0])
    metric.add_batch(predictions=[3.0, 4.0], references=[2.0, 6.0], events=[1, 0])
    assert metric.compute()["c_index"] == pytest.approx(2.5 / 5)


def test_metrics_combine_with_evaluate_combine():
    combined = evaluate.combine([Accuracy(), MacroF1()])
    assert combined.compute(predictions=[0, 1, 1], references=[0, 1, 0]) == {
        "accuracy": pytest.approx(2 / 3),
        "f1_macro": pytest.approx(f1_score([0, 1, 0], [0, 1, 1], average="macro")),
    }


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 120)
    scores = labels * 0.5 + rng.random(120)
    first = bootstrap_confidence_interval(auroc_score, [labels, scores], n_resamples=200, seed=3)
    second = bootstrap_confidence_interval(auroc_score, [labels, scores], n_resamples=200, seed=3)
    assert first == second
    lower, upper, used = first
    assert used == 200
    assert lower < auroc_score(labels, scores) < upper


def test_bootstrap_interval_narrows_with_more_patients():
    rng = np.random.default_rng(4)
    widths = []
    for size in (40, 400):
        labels = rng.integers(0, 2, size)
        scores = labels * 0.5 + rng.random(size)
        lower, upper, _ = bootstrap_confidence_interval(auroc_score, [labels, scores], n_resamples=200, seed=0)
        widths.append(upper - lower)
    assert widths[1] < widths[0] / 2


def test_classification_metrics_report_value_and_interval_for_each_metric():
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9], [0.4, 0.6]])
    metrics = classification_metrics_with_intervals(labels, probabilities, n_resamples=50)
    assert set(metrics) == {"accuracy", "f1_macro", "auroc"}
    assert metrics["accuracy"]["value"] == pytest.approx(6 / 8)
    assert metrics["auroc"]["value"] == pytest.approx(roc_auc_score(labels, probabilities[:, 1]))
    for entry in metrics.values():
        assert entry["ci_lower"] <= entry["value"] <= entry["ci_upper"]
        assert entry["confidence"] == 0.95


def test_survival_metrics_report_the_c_index_with_an_interval():
    rng = np.random.default_rng(5)
    risk = rng.normal(size=80)
    duration = rng.exponential(np.exp(-risk))
    event = (rng.random(80) < 0.8).astype(int)
    metrics = survival_metrics_with_intervals(risk, duration, event, n_resamples=100)
    entry = metrics["c_index"]
    assert entry["value"] == pytest.approx(concordance_index(risk, duration, event))
    assert 0.5 < entry["ci_lower"] < entry["value"] < entry["ci_upper"] <= 1.0
