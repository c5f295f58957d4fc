"""Evaluation report of train/report.py: Kaplan-Meier and log-rank statistics, PNG figures and the HTML page."""

import numpy as np
import pytest

from train.finetune import TaskSpecification
from train.report import kaplan_meier_curve, log_rank_test, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_kaplan_meier_matches_a_hand_computed_curve():
    # times 1(event) 2(censored) 3(event) 4(event): S = 3/4 at 1, then 3/4 * 1/2 at 3, then 0 at 4
    times, survival = kaplan_meier_curve([1, 2, 3, 4], [1, 0, 1, 1])
    np.testing.assert_allclose(times, [0, 1, 3, 4])
    np.testing.assert_allclose(survival, [1.0, 0.75, 0.375, 0.0])


def test_log_rank_separates_groups_with_different_hazards_but_not_identical_ones():
    rng = np.random.default_rng(0)
    group = np.arange(200) < 100
    duration = rng.exponential(np.where(group, 1.0, 4.0))
    event = np.ones(200, dtype=int)
    assert log_rank_test(duration, event, group)[1] < 1e-6
    same = rng.exponential(1.0, size=200)
    assert log_rank_test(same, event, group)[1] > 0.01


def _metrics(name):
    return {name: {"value": 0.8, "ci_lower": 0.7, "ci_upper": 0.9, "confidence": 0.95, "bootstrap_resamples": 10}}


def _summary():
    return {"method": "lora", "dataset": "synthetic", "base": "base", "evaluated_on": "test", "evaluated_patients": 40,
            "trainable_parameters": 10, "total_parameters": 1000, "trainable_fraction": 0.01}


def test_classification_report_has_roc_curves_confusion_matrix_and_metrics_table(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 40)
    probabilities = rng.dirichlet(np.ones(3), size=40)
    task = TaskSpecification("stage", "classification", label_column="stage", class_names=["I", "II", "III"])
    files = write_report(tmp_path, task, _metrics("auroc"), {"labels": labels, "probabilities": probabilities}, _summary())
    for name in ("roc_curves", "confusion_matrix"):
        assert files[name].read_bytes()[:8] == PNG_SIGNATURE
    page = files["html"].read_text(encoding="utf-8")
    assert "0.7000 - 0.9000 (95% CI)" in page
    assert page.count("data:image/png;base64,") == 2
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_survival_report_has_kaplan_meier_curves_of_predicted_risk_groups(tmp_path):
    rng = np.random.default_rng(2)
    risk = rng.normal(size=60)
    duration = rng.exponential(np.exp(-risk))
    event = rng.integers(0, 2, 60)
    task = TaskSpecification("survival", "survival", duration_column="survival_days", event_column="event")
    files = write_report(tmp_path, task, _metrics("c_index"), {"risk": risk, "duration": duration, "event": event}, _summary())
    assert files["kaplan_meier"].read_bytes()[:8] == PNG_SIGNATURE
    page = files["html"].read_text(encoding="utf-8")
    assert "log rank p value" in page and "c_index" in page
