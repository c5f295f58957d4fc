"""Downstream metrics as local `evaluate` modules (no Hub download): accuracy, F1, AUROC, Harrell's C-index,
plus percentile-bootstrap 95% confidence intervals over patients.

`evaluate.load("accuracy")` fetches a script from the Hub and cannot work offline, so the metrics are
`evaluate.Metric` subclasses defined here; instantiate them directly (`Accuracy().compute(...)`) or combine them
(`evaluate.combine([Accuracy(), MacroF1()])`). The evaluate modules and the bootstrap share the same plain
numpy functions, so a value and its confidence interval are always computed the same way.
"""

import datasets
import evaluate
import numpy as np

DEFAULT_BOOTSTRAP_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


class UndefinedMetricError(ValueError):
    """A metric that has no value on this sample (e.g. AUROC when only one class is present)."""


# --------------------------------------------------------------------------------------------------------------
# Plain functions: the one definition of every metric
# --------------------------------------------------------------------------------------------------------------


def accuracy_score(labels, predicted_labels):
    """Fraction of examples whose predicted class equals the true class."""
    labels, predicted_labels = np.asarray(labels), np.asarray(predicted_labels)
    if labels.size == 0:
        raise UndefinedMetricError("accuracy needs at least one example")
    return float(np.mean(labels == predicted_labels))


def macro_f1_score(labels, predicted_labels, classes=None):
    """Unweighted mean over classes of F1 (classes seen in either labels or predictions, or `classes`).

    For two classes this is the mean of both classes' F1, which does not depend on which class is called positive.
    """
    from sklearn.metrics import f1_score

    labels, predicted_labels = np.asarray(labels), np.asarray(predicted_labels)
    if labels.size == 0:
        raise UndefinedMetricError("F1 needs at least one example")
    classes = np.unique(np.concatenate([labels, predicted_labels])) if classes is None else np.asarray(classes)
    return float(f1_score(labels, predicted_labels, labels=classes, average="macro", zero_division=0))


def auroc_score(labels, scores):
    """Area under the ROC curve: binary (`scores` (N,) for the positive class, or (N, 2)) or one-vs-rest macro.

    For K > 2 classes `scores` is (N, K) probabilities; classes absent from `labels` are left out of the mean
    (their one-vs-rest AUROC is undefined).
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1]
    if scores.ndim == 1:
        if len(np.unique(labels)) < 2:
            raise UndefinedMetricError("AUROC needs both classes among the labels")
        return float(roc_auc_score(labels, scores))
    per_class = one_vs_rest_auroc(labels, scores)
    defined = [value for value in per_class.values() if value is not None]
    if len(defined) == 0:
        raise UndefinedMetricError("one-vs-rest AUROC needs at least two classes among the labels")
    return float(np.mean(defined))


def one_vs_rest_auroc(labels, scores):
    """{class index: AUROC of that class against all others, or None when it is absent or alone}."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    result = {}
    for class_index in range(scores.shape[1]):
        positive = labels == class_index
        if positive.all() or not positive.any():
            result[class_index] = None
        else:
            result[class_index] = float(roc_auc_score(positive.astype(int), scores[:, class_index]))
    return result


def concordance_index(risk, duration, event):
    """Harrell's C-index: among comparable pairs, the fraction where the higher risk had the shorter survival.

    A pair (i, j) is comparable when i had an event (`event[i] == 1`) and `duration[i] < duration[j]`; risk
    ties count one half. Higher `risk` means a worse prognosis (a Cox log-hazard).
    """
    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    duration = np.asarray(duration, dtype=np.float64).reshape(-1)
    event = np.asarray(event).reshape(-1).astype(bool)
    if not (risk.shape == duration.shape == event.shape):
        raise ValueError(f"risk, duration and event must have one value per patient, got {risk.shape}, {duration.shape}, {event.shape}")
    concordant = 0.0
    comparable = 0
    # Row blocks keep memory at O(block x N) for large cohorts.
    for start in range(0, len(risk), 1024):
        rows = slice(start, start + 1024)
        is_comparable = event[rows, None] & (duration[rows, None] < duration[None, :])
        risk_difference = risk[rows, None] - risk[None, :]
        comparable += int(is_comparable.sum())
        concordant += float((is_comparable & (risk_difference > 0)).sum()) + 0.5 * float((is_comparable & (risk_difference == 0)).sum())
    if comparable == 0:
        raise UndefinedMetricError("the C-index needs at least one comparable pair (an event before another follow-up time)")
    return concordant / comparable


# --------------------------------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------------------------------------------


def bootstrap_confidence_interval(statistic, arrays, n_resamples=DEFAULT_BOOTSTRAP_RESAMPLES,
                                  confidence=DEFAULT_CONFIDENCE, seed=0):
    """Percentile bootstrap interval of `statistic(*arrays)`, resampling examples (patients) with replacement.

    Resamples on which the statistic is undefined (e.g. one class only) are drawn again, up to 10x the number
    asked for; returns (lower, upper, number of resamples used).
    """
    arrays = [np.asarray(array) for array in arrays]
    size = len(arrays[0])
    rng = np.random.default_rng(seed)
    values = []
    attempts = 0
    while len(values) < n_resamples and attempts < 10 * n_resamples:
        attempts += 1
        indices = rng.integers(0, size, size=size)
        try:
            values.append(statistic(*(array[indices] for array in arrays)))
        except UndefinedMetricError:
            continue
    if not values:
        return float("nan"), float("nan"), 0
    tail = (1.0 - confidence) / 2.0
    lower, upper = np.quantile(values, [tail, 1.0 - tail])
    return float(lower), float(upper), len(values)


def _with_interval(statistic, arrays, n_resamples, confidence, seed):
    try:
        value = statistic(*arrays)
    except UndefinedMetricError:
        value = float("nan")
    lower, upper, used = bootstrap_confidence_interval(statistic, arrays, n_resamples, confidence, seed)
    return {"value": value, "ci_lower": lower, "ci_upper": upper, "confidence": confidence, "bootstrap_resamples": used}


def classification_metrics_with_intervals(labels, probabilities, n_resamples=DEFAULT_BOOTSTRAP_RESAMPLES,
                                          confidence=DEFAULT_CONFIDENCE, seed=0):
    """Accuracy, macro F1 and AUROC (binary or one-vs-rest macro), each with a bootstrap confidence interval.

    `probabilities` (N, K) class probabilities; the predicted class is their argmax.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    index = np.arange(len(labels))
    metrics = {
        "accuracy": _with_interval(
            lambda rows: accuracy_score(labels[rows], predicted[rows]), [index], n_resamples, confidence, seed
        ),
        "f1_macro": _with_interval(
            lambda rows: macro_f1_score(labels[rows], predicted[rows]), [index], n_resamples, confidence, seed
        ),
        "auroc": _with_interval(
            lambda rows: auroc_score(labels[rows], probabilities[rows]), [index], n_resamples, confidence, seed
        ),
    }
    return metrics


def survival_metrics_with_intervals(risk, duration, event, n_resamples=DEFAULT_BOOTSTRAP_RESAMPLES,
                                    confidence=DEFAULT_CONFIDENCE, seed=0):
    """Harrell's C-index of `risk` with a bootstrap confidence interval."""
    return {"c_index": _with_interval(concordance_index, [risk, duration, event], n_resamples, confidence, seed)}


# --------------------------------------------------------------------------------------------------------------
# evaluate modules
# --------------------------------------------------------------------------------------------------------------


class _LocalMetric(evaluate.Metric):
    """An `evaluate.Metric` that keeps its buffered predictions in memory unless told otherwise."""

    def __init__(self, *args, keep_in_memory=True, **kwargs):
        super().__init__(*args, keep_in_memory=keep_in_memory, **kwargs)


class Accuracy(_LocalMetric):
    """Accuracy: `predictions` and `references` are class indices; returns {"accuracy": float}."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of examples whose predicted class equals the reference class.",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": accuracy_score(references, predictions)}


class MacroF1(_LocalMetric):
    """Macro-averaged F1 over classes: class-index `predictions` and `references`; returns {"f1_macro": float}."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Unweighted mean over classes of the F1 score.",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, classes=None):
        return {"f1_macro": macro_f1_score(references, predictions, classes)}


class AUROC(_LocalMetric):
    """AUROC. Config "binary": `prediction_scores` is the positive-class score per example; config "multiclass":
    a list of K class probabilities per example (one-vs-rest macro). Returns {"auroc": float}."""

    def _info(self):
        if self.config_name == "multiclass":
            scores = datasets.Sequence(datasets.Value("float64"))
        else:
            scores = datasets.Value("float64")
        return evaluate.MetricInfo(
            description="Area under the receiver operating characteristic curve (one-vs-rest macro for K > 2).",
            citation="Hanley JA, McNeil BJ. The meaning and use of the area under a ROC curve. Radiology 1982.",
            features=datasets.Features({"prediction_scores": scores, "references": datasets.Value("int64")}),
        )

    def _compute(self, prediction_scores, references):
        return {"auroc": auroc_score(references, np.asarray(prediction_scores, dtype=np.float64))}


class ConcordanceIndex(_LocalMetric):
    """Harrell's C-index: `predictions` risk scores (higher = worse), `references` follow-up durations,
    `events` 1 for an observed event and 0 for censoring. Returns {"c_index": float}."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Harrell's concordance index for right-censored survival data.",
            citation="Harrell FE et al. Evaluating the yield of medical tests. JAMA 1982.",
            features=datasets.Features(
                {
                    "predictions": datasets.Value("float64"),
                    "references": datasets.Value("float64"),
                    "events": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, events):
        return {"c_index": concordance_index(predictions, references, events)}


__all__ = [
    "AUROC",
    "Accuracy",
    "ConcordanceIndex",
    "MacroF1",
    "UndefinedMetricError",
    "accuracy_score",
    "auroc_score",
    "bootstrap_confidence_interval",
    "classification_metrics_with_intervals",
    "concordance_index",
    "macro_f1_score",
    "one_vs_rest_auroc",
    "survival_metrics_with_intervals",
]
