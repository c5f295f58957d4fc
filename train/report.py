"""Evaluation report of a fine-tuning run: ROC curves, confusion matrix, Kaplan-Meier curves of predicted risk
groups (PNG, matplotlib Agg backend) and one self-contained HTML page with the metrics and their 95% CIs."""

import base64
import html
import os
import tempfile
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure_atomically(figure, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=110, bbox_inches="tight", format="png")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


# --------------------------------------------------------------------------------------------------------------
# Survival statistics used by the plots
# --------------------------------------------------------------------------------------------------------------


def kaplan_meier_curve(duration, event):
    """Kaplan-Meier survival estimate: (times, survival) as a right-continuous step function starting at (0, 1)."""
    duration = np.asarray(duration, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    times = [0.0]
    survival = [1.0]
    current = 1.0
    for time in np.unique(duration[event]):
        at_risk = np.sum(duration >= time)
        deaths = np.sum((duration == time) & event)
        current *= 1.0 - deaths / at_risk
        times.append(float(time))
        survival.append(float(current))
    return np.asarray(times), np.asarray(survival)


def log_rank_test(duration, event, group):
    """Two-group log-rank test: (chi-square statistic, p-value); nan when there is no event."""
    from scipy.stats import chi2

    duration = np.asarray(duration, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    group = np.asarray(group).astype(bool)
    observed_minus_expected = 0.0
    variance = 0.0
    for time in np.unique(duration[event]):
        at_risk = duration >= time
        total_at_risk = at_risk.sum()
        group_at_risk = (at_risk & group).sum()
        deaths = ((duration == time) & event).sum()
        group_deaths = ((duration == time) & event & group).sum()
        observed_minus_expected += group_deaths - deaths * group_at_risk / total_at_risk
        if total_at_risk > 1:
            variance += (
                deaths * (group_at_risk / total_at_risk) * (1 - group_at_risk / total_at_risk)
                * (total_at_risk - deaths) / (total_at_risk - 1)
            )
    if variance <= 0:
        return float("nan"), float("nan")
    statistic = observed_minus_expected**2 / variance
    return float(statistic), float(chi2.sf(statistic, df=1))


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------


def plot_roc_curves(labels, probabilities, class_names, path, title="ROC curves"):
    """Binary: one ROC curve; more classes: one one-vs-rest curve per class present in `labels`."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    figure, axis = plt.subplots(figsize=(5.2, 5.0))
    curves = [1] if probabilities.shape[1] == 2 else range(probabilities.shape[1])
    for class_index in curves:
        positive = labels == class_index
        if positive.all() or not positive.any():
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(positive.astype(int), probabilities[:, class_index])
        area = roc_auc_score(positive.astype(int), probabilities[:, class_index])
        name = class_names[class_index] if probabilities.shape[1] > 2 else f"{class_names[1]} vs {class_names[0]}"
        axis.plot(false_positive_rate, true_positive_rate, linewidth=1.8, label=f"{name} (AUROC {area:.3f})")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axis.set_xlabel("1 - specificity (false positive rate)")
    axis.set_ylabel("sensitivity (true positive rate)")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="lower right", fontsize=8)
    path = _save_figure_atomically(figure, path)
    plt.close(figure)
    return path


def plot_confusion_matrix(labels, predicted, class_names, path, title="Confusion matrix"):
    """Counts of (true class, predicted class), with row percentages."""
    plt = _pyplot()
    size = len(class_names)
    matrix = np.zeros((size, size), dtype=int)
    for true, guess in zip(np.asarray(labels).astype(int), np.asarray(predicted).astype(int)):
        matrix[true, guess] += 1
    figure, axis = plt.subplots(figsize=(1.2 * size + 3, 1.0 * size + 2.5))
    image = axis.imshow(matrix, cmap="Blues")
    row_totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for row in range(size):
        for column in range(size):
            colour = "white" if matrix[row, column] > matrix.max() / 2 else "black"
            axis.text(column, row, f"{matrix[row, column]}\n{100 * matrix[row, column] / row_totals[row, 0]:.0f}%",
                      ha="center", va="center", color=colour, fontsize=9)
    axis.set_xticks(range(size), class_names, rotation=30, ha="right")
    axis.set_yticks(range(size), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    path = _save_figure_atomically(figure, path)
    plt.close(figure)
    return path


def plot_kaplan_meier(risk, duration, event, path, title="Kaplan-Meier by predicted risk group"):
    """Patients split at the median predicted risk: high- vs low-risk survival curves with the log-rank p-value."""
    plt = _pyplot()
    risk = np.asarray(risk, dtype=np.float64)
    duration = np.asarray(duration, dtype=np.float64)
    event = np.asarray(event).astype(int)
    high = risk > np.median(risk)
    statistic, p_value = log_rank_test(duration, event, high)
    figure, axis = plt.subplots(figsize=(6.0, 4.6))
    for mask, name, colour in ((~high, "low predicted risk", "tab:blue"), (high, "high predicted risk", "tab:red")):
        if not mask.any():
            continue
        times, survival = kaplan_meier_curve(duration[mask], event[mask])
        axis.step(times, survival, where="post", color=colour, linewidth=1.8,
                  label=f"{name} (n={int(mask.sum())}, events={int(event[mask].sum())})")
        censored = mask & (event == 0)
        if censored.any():
            censored_times = duration[censored]
            heights = [survival[np.searchsorted(times, value, side="right") - 1] for value in censored_times]
            axis.plot(censored_times, heights, "|", color=colour, markersize=8)
    axis.set_xlabel("time (days)")
    axis.set_ylabel("survival probability")
    axis.set_ylim(0, 1.03)
    p_text = "n/a" if np.isnan(p_value) else f"{p_value:.3g}"
    axis.set_title(f"{title}\nlog-rank p = {p_text}")
    axis.legend(loc="lower left", fontsize=8)
    path = _save_figure_atomically(figure, path)
    plt.close(figure)
    return path, {"log_rank_statistic": statistic, "log_rank_p_value": p_value, "split": "median predicted risk"}


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------


def _format(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _metrics_table(metrics):
    rows = []
    for name, entry in metrics.items():
        interval = ""
        if "ci_lower" in entry:
            confidence = int(round(100 * entry.get("confidence", 0.95)))
            interval = f"{_format(entry['ci_lower'])} - {_format(entry['ci_upper'])} ({confidence}% CI)"
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_format(entry['value'])}</td><td>{interval}</td></tr>")
    return "<table><tr><th>metric</th><th>value</th><th>bootstrap interval</th></tr>" + "".join(rows) + "</table>"


def _embedded_image(path, caption):
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)} ({html.escape(Path(path).name)})</figcaption></figure>")


def write_report(output_dir, task, metrics, arrays, summary):
    """Write the figures for `task` and `report.html` into `output_dir`; returns {name: path}.

    `arrays` holds `labels` + `probabilities` (classification) or `risk` + `duration` + `event` (survival).
    """
    output_dir = Path(output_dir)
    files = {}
    extra = {}
    if task.kind == "survival":
        files["kaplan_meier"], extra = plot_kaplan_meier(
            arrays["risk"], arrays["duration"], arrays["event"], output_dir / "kaplan_meier.png"
        )
        figures = [(files["kaplan_meier"], "Kaplan-Meier curves of patients split at the median predicted risk")]
    else:
        labels, probabilities = arrays["labels"], arrays["probabilities"]
        files["roc_curves"] = plot_roc_curves(labels, probabilities, task.class_names, output_dir / "roc_curves.png")
        files["confusion_matrix"] = plot_confusion_matrix(
            labels, probabilities.argmax(axis=1), task.class_names, output_dir / "confusion_matrix.png"
        )
        figures = [
            (files["roc_curves"], "ROC curves (one-vs-rest for more than two classes)"),
            (files["confusion_matrix"], "Confusion matrix (predicted class = highest probability)"),
        ]
    facts = {
        "task": task.name,
        "method": summary.get("method"),
        "dataset": summary.get("dataset"),
        "base model": summary.get("base"),
        "evaluated on": f"{summary.get('evaluated_on')} ({summary.get('evaluated_patients')} patients)",
        "trainable / total parameters": (
            f"{summary.get('trainable_parameters'):,} / {summary.get('total_parameters'):,} "
            f"({100 * summary.get('trainable_fraction', 0):.3f}%)"
        ),
    }
    if task.kind == "classification":
        facts["classes"] = ", ".join(task.class_names)
    for name, value in extra.items():
        facts[name.replace("_", " ")] = value if isinstance(value, str) else _format(value)
    fact_rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{_format(value)}</td></tr>" for name, value in facts.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>LuCaFound fine-tuning report: {html.escape(task.name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}
figure{{display:inline-block;margin:1em}}img{{max-width:32em}}</style></head>
<body><h1>LuCaFound fine-tuning report: {html.escape(task.name)}</h1>
<table>{fact_rows}</table>
<h2>Metrics</h2>{_metrics_table(metrics)}
<p>Intervals: percentile bootstrap over patients of the evaluated set.</p>
<h2>Figures</h2>{''.join(_embedded_image(path, caption) for path, caption in figures)}
</body></html>
"""
    handle, temporary = tempfile.mkstemp(dir=output_dir, prefix=".report.html.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(page)
        os.replace(temporary, output_dir / "report.html")
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    files["html"] = output_dir / "report.html"
    return files


__all__ = [
    "kaplan_meier_curve",
    "log_rank_test",
    "plot_confusion_matrix",
    "plot_kaplan_meier",
    "plot_roc_curves",
    "write_report",
]
