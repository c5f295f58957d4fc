"""Linear probes on frozen LuCaFound CT features: one encoder pass (cached on disk), then logistic regression for
classes or a ridge-penalised Cox model for survival. The fastest honest read-out of what the encoder knows.

Features are the encoder's pooled CT feature (`pooler_output`, 1024-d for Swin3D-B), standardised with the
training split's mean and spread. The penalty strength is chosen by patient-grouped cross-validation on the
training split only, so the test split stays untouched until the final evaluation.
"""

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

REGULARIZATION_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


# --------------------------------------------------------------------------------------------------------------
# Feature extraction and cache
# --------------------------------------------------------------------------------------------------------------


def vision_encoder_of(model):
    """The CT encoder inside a dual encoder, a task-head model or a PEFT wrapper (or the encoder itself)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.vision_model if hasattr(model, "vision_model") else model


def encoder_fingerprint(encoder):
    """SHA-256 of the encoder's configuration and weights: the cache key of features it computed."""
    digest = hashlib.sha256(json.dumps(encoder.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def extract_features(encoder, dataset, collate_fn, batch_size=4, device=None):
    """Pooled CT features (N, hidden) of every example of `dataset`, in order, from the frozen encoder."""
    encoder = vision_encoder_of(encoder)
    device = device or next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    features = []
    for batch in loader:
        pixel_values = batch["pixel_values"].to(device)
        features.append(encoder(pixel_values=pixel_values).pooler_output.float().cpu().numpy())
    encoder.train(was_training)
    return np.concatenate(features) if features else np.zeros((0, encoder.config.hidden_size), dtype=np.float32)


def cached_features(encoder, dataset, collate_fn, cache_file, batch_size=4, device=None):
    """`extract_features`, reused from `cache_file` (.npz) when the encoder weights and the dataset are the same.

    The cache records the encoder fingerprint and the dataset's fingerprint; any difference recomputes and
    rewrites it (atomically).
    """
    encoder = vision_encoder_of(encoder)
    key = f"{encoder_fingerprint(encoder)}:{getattr(dataset, '_fingerprint', None)}:{len(dataset)}"
    cache_file = Path(cache_file)
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as stored:
            if str(stored["key"]) == key:
                logger.info("reusing cached CT features from %s", cache_file)
                return stored["features"]
    features = extract_features(encoder, dataset, collate_fn, batch_size=batch_size, device=device)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=cache_file.parent, prefix=f".{cache_file.name}.", suffix=".npz")
    os.close(handle)
    try:
        np.savez(temporary, features=features, key=np.array(key))
        os.replace(temporary, cache_file)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return features


# --------------------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------------------


class FeatureStandardizer:
    """Per-feature mean and spread from the training features; constant features are left unscaled."""

    def fit(self, features):
        features = np.asarray(features, dtype=np.float64)
        self.mean = features.mean(axis=0)
        spread = features.std(axis=0)
        self.scale = np.where(spread > 1e-12, spread, 1.0)
        return self

    def transform(self, features):
        return (np.asarray(features, dtype=np.float64) - self.mean) / self.scale


def _group_folds(groups, stratify, n_folds, seed):
    """Patient-grouped folds (list of (train_rows, held_out_rows)); stratified by `stratify` when given."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups)
    n_folds = min(n_folds, len(np.unique(groups)))
    if n_folds < 2:
        return []
    rows = np.arange(len(groups))
    if stratify is not None:
        smallest_class = np.bincount(np.asarray(stratify).astype(int)).astype(float)
        smallest_class = smallest_class[smallest_class > 0].min()
        if smallest_class >= n_folds:
            splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            return list(splitter.split(rows, stratify, groups))
    return list(GroupKFold(n_splits=n_folds).split(rows, groups=groups))


class LogisticProbe:
    """Standardise, then multinomial logistic regression with an L2 penalty `1 / C`.

    `class_weight="balanced"` weights each class by the inverse of its frequency, so a rare class counts as much
    as a common one.
    """

    def __init__(self, inverse_regularization=1.0, class_weight="balanced", num_classes=None):
        self.inverse_regularization = float(inverse_regularization)
        self.class_weight = class_weight
        self.num_classes = num_classes

    def fit(self, features, labels):
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels).astype(int)
        self.num_classes = self.num_classes or int(labels.max()) + 1
        self.standardizer = FeatureStandardizer().fit(features)
        self.model = LogisticRegression(
            C=self.inverse_regularization, class_weight=self.class_weight, max_iter=5000
        )
        self.model.fit(self.standardizer.transform(features), labels)
        return self

    def predict_proba(self, features):
        """(N, num_classes) probabilities; classes unseen in training get probability 0."""
        seen = self.model.predict_proba(self.standardizer.transform(features))
        probabilities = np.zeros((seen.shape[0], self.num_classes))
        probabilities[:, self.model.classes_] = seen
        return probabilities

    def to_dict(self):
        return {
            "kind": "logistic",
            "inverse_regularization": self.inverse_regularization,
            "class_weight": self.class_weight,
            "num_classes": self.num_classes,
            "classes": self.model.classes_.tolist(),
            "coefficients": self.model.coef_.tolist(),
            "intercept": self.model.intercept_.tolist(),
            "feature_mean": self.standardizer.mean.tolist(),
            "feature_scale": self.standardizer.scale.tolist(),
        }


class CoxProbe:
    """Standardise, then a linear Cox model (Breslow ties) with a ridge penalty, fitted by L-BFGS.

    The loss is `modeling_lucafound.losses.cox_partial_likelihood_loss`, the same one the survival head trains with.
    """

    def __init__(self, ridge_penalty=0.1):
        self.ridge_penalty = float(ridge_penalty)

    def fit(self, features, duration, event):
        from modeling_lucafound.losses import cox_partial_likelihood_loss

        self.standardizer = FeatureStandardizer().fit(features)
        inputs = torch.as_tensor(self.standardizer.transform(features), dtype=torch.float64)
        duration = torch.as_tensor(np.asarray(duration, dtype=np.float64))
        event = torch.as_tensor(np.asarray(event, dtype=np.float64))
        weights = torch.zeros(inputs.shape[1], dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weights], lr=1.0, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = cox_partial_likelihood_loss(inputs @ weights, duration, event).double()
            loss = loss + 0.5 * self.ridge_penalty * weights.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.coefficients = weights.detach().numpy()
        return self

    def predict_risk(self, features):
        """Log-hazard score per patient (higher = worse prognosis)."""
        return self.standardizer.transform(features) @ self.coefficients

    def to_dict(self):
        return {
            "kind": "cox",
            "ridge_penalty": self.ridge_penalty,
            "coefficients": self.coefficients.tolist(),
            "feature_mean": self.standardizer.mean.tolist(),
            "feature_scale": self.standardizer.scale.tolist(),
        }


def fit_logistic_probe(features, labels, groups, num_classes, class_weight="balanced", grid=REGULARIZATION_GRID,
                       n_folds=5, seed=0):
    """A `LogisticProbe` whose C is chosen by patient-grouped cross-validation (mean held-out AUROC)."""
    from train.metrics import UndefinedMetricError, auroc_score

    labels = np.asarray(labels).astype(int)
    folds = _group_folds(groups, labels, n_folds, seed)
    scores = {}
    for value in grid:
        fold_scores = []
        for train_rows, held_out_rows in folds:
            if len(np.unique(labels[train_rows])) < 2:
                continue
            probe = LogisticProbe(value, class_weight, num_classes).fit(features[train_rows], labels[train_rows])
            try:
                fold_scores.append(auroc_score(labels[held_out_rows], probe.predict_proba(features[held_out_rows])))
            except UndefinedMetricError:
                continue
        if fold_scores:
            scores[value] = float(np.mean(fold_scores))
    best = max(scores, key=scores.get) if scores else 1.0
    probe = LogisticProbe(best, class_weight, num_classes).fit(features, labels)
    probe.cross_validation = {str(key): value for key, value in scores.items()}
    return probe


def fit_cox_probe(features, duration, event, groups, grid=REGULARIZATION_GRID, n_folds=5, seed=0):
    """A `CoxProbe` whose ridge penalty is chosen by patient-grouped cross-validation (mean held-out C-index).

    The grid holds inverse strengths (as for the logistic probe): penalty = 1 / value.
    """
    from train.metrics import UndefinedMetricError, concordance_index

    duration, event = np.asarray(duration, dtype=np.float64), np.asarray(event).astype(int)
    folds = _group_folds(groups, None, n_folds, seed)
    scores = {}
    for value in grid:
        fold_scores = []
        for train_rows, held_out_rows in folds:
            if event[train_rows].sum() == 0:
                continue
            probe = CoxProbe(1.0 / value).fit(features[train_rows], duration[train_rows], event[train_rows])
            try:
                fold_scores.append(
                    concordance_index(probe.predict_risk(features[held_out_rows]), duration[held_out_rows], event[held_out_rows])
                )
            except UndefinedMetricError:
                continue
        if fold_scores:
            scores[value] = float(np.mean(fold_scores))
    best = max(scores, key=scores.get) if scores else 1.0
    probe = CoxProbe(1.0 / best).fit(features, duration, event)
    probe.cross_validation = {str(key): value for key, value in scores.items()}
    return probe


def save_probe(probe, path):
    """Write the probe's standardisation and coefficients as JSON (no pickle), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = probe.to_dict()
    payload["cross_validation"] = getattr(probe, "cross_validation", {})
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


__all__ = [
    "CoxProbe",
    "FeatureStandardizer",
    "LogisticProbe",
    "cached_features",
    "encoder_fingerprint",
    "extract_features",
    "fit_cox_probe",
    "fit_logistic_probe",
    "save_probe",
    "vision_encoder_of",
]
