"""Linear probes of train/linear_probe.py: logistic and Cox probes on known features, and the feature cache."""

import json

import numpy as np
import pytest
import torch

from modeling_lucafound.modeling_lucafound import LuCaFoundVisionModel
from tiny_models import TINY_VISION
from modeling_lucafound.configuration_lucafound import LuCaFoundVisionConfig
from train.linear_probe import (
    CoxProbe,
    LogisticProbe,
    cached_features,
    extract_features,
    fit_cox_probe,
    fit_logistic_probe,
    save_probe,
)
from train.metrics import auroc_score, concordance_index


def _separable_classes(seed, size=120):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size)
    features = rng.normal(size=(size, 6))
    features[:, :3] += 2.5 * np.eye(3)[labels]
    return features, labels


def test_logistic_probe_separates_classes_that_the_features_encode():
    features, labels = _separable_classes(0)
    probe = fit_logistic_probe(features[:80], labels[:80], groups=np.arange(80), num_classes=3)
    assert auroc_score(labels[80:], probe.predict_proba(features[80:])) > 0.9
    assert probe.cross_validation  # the penalty was chosen by cross-validation


def test_logistic_probe_gives_zero_probability_to_classes_absent_from_training():
    features, labels = _separable_classes(1)
    keep = labels < 2
    probe = LogisticProbe(num_classes=3).fit(features[keep], labels[keep])
    probabilities = probe.predict_proba(features)
    assert probabilities.shape == (len(features), 3)
    np.testing.assert_allclose(probabilities[:, 2], 0.0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_balanced_class_weight_raises_recall_of_the_rare_class():
    rng = np.random.default_rng(2)
    labels = (rng.random(400) < 0.1).astype(int)
    features = rng.normal(size=(400, 3)) + 0.8 * labels[:, None]
    recalls = {}
    for weighting in (None, "balanced"):
        predicted = LogisticProbe(class_weight=weighting).fit(features, labels).predict_proba(features).argmax(axis=1)
        recalls[weighting] = predicted[labels == 1].mean()
    assert recalls["balanced"] > recalls[None]


def test_cox_probe_ranks_patients_by_the_hazard_the_features_encode():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(200, 4))
    log_hazard = 1.5 * features[:, 0] - 1.0 * features[:, 1]
    duration = rng.exponential(np.exp(-log_hazard))
    censoring = rng.exponential(2.0, size=200)
    event = (duration <= censoring).astype(int)
    duration = np.minimum(duration, censoring)
    probe = fit_cox_probe(features[:150], duration[:150], event[:150], groups=np.arange(150), grid=(0.1, 1.0), n_folds=3)
    assert concordance_index(probe.predict_risk(features[150:]), duration[150:], event[150:]) > 0.75
    assert probe.coefficients[0] > 0 > probe.coefficients[1]


def test_saved_probe_is_plain_json_with_standardisation_and_coefficients(tmp_path):
    features, labels = _separable_classes(4, 40)
    path = save_probe(CoxProbe().fit(features, np.arange(40.0) + 1, np.ones(40)), tmp_path / "probe.json")
    payload = json.loads(path.read_text())
    assert payload["kind"] == "cox" and len(payload["coefficients"]) == 6 and len(payload["feature_scale"]) == 6


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, volumes):
        self.volumes = volumes
        self._fingerprint = "fixed-volumes"

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, index):
        return {"pixel_values": self.volumes[index]}


def _collate(examples):
    return {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}


def test_feature_cache_is_reused_for_the_same_encoder_and_recomputed_after_a_weight_change(tmp_path, monkeypatch):
    torch.manual_seed(0)
    encoder = LuCaFoundVisionModel(LuCaFoundVisionConfig(**TINY_VISION)).eval()
    dataset = _ListDataset([torch.rand(1, 8, 32, 32) for _ in range(3)])
    cache = tmp_path / "features.npz"
    first = cached_features(encoder, dataset, _collate, cache, batch_size=2)
    np.testing.assert_allclose(first, extract_features(encoder, dataset, _collate), atol=1e-6)

    calls = []
    import train.linear_probe as linear_probe

    original = linear_probe.extract_features
    monkeypatch.setattr(linear_probe, "extract_features", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    np.testing.assert_array_equal(cached_features(encoder, dataset, _collate, cache), first)
    assert calls == []
    with torch.no_grad():
        encoder.norm.weight.mul_(2.0)
    changed = cached_features(encoder, dataset, _collate, cache)
    assert calls == [1]
    assert not np.allclose(changed, first)
