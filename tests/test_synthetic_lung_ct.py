"""Tests of the SyntheticLungCT builder: configs, splits, labels, reports, reproducibility."""

import json

import numpy as np
import pytest

from datasets_scripts import SyntheticLungCT
from datasets_scripts.phantoms import HISTOLOGY_CLASSES, generate_chest_phantom
from datasets_scripts.synthetic_lung_ct import phantom_seed


SHAPE = (24, 64, 64)


@pytest.fixture(scope="module")
def raw_dataset(tmp_path_factory):
    builder = SyntheticLungCT(
        config_name="raw", num_samples=10, phantom_shape=SHAPE, cache_dir=str(tmp_path_factory.mktemp("cache"))
    )
    builder.download_and_prepare()
    return builder.as_dataset()


@pytest.fixture(scope="module")
def preprocessed_dataset(tmp_path_factory):
    builder = SyntheticLungCT(
        config_name="preprocessed",
        num_samples=4,
        phantom_shape=SHAPE,
        image_size=(16, 32, 32),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    builder.download_and_prepare()
    return builder.as_dataset()


def test_num_samples_patients_split_without_overlap(raw_dataset):
    ids = {split: set(dataset["patient_id"]) for split, dataset in raw_dataset.items()}
    assert sum(len(values) for values in ids.values()) == 10
    assert (
        not (ids["train"] & ids["test"])
        and not (ids["train"] & ids["validation"])
        and not (ids["validation"] & ids["test"])
    )


def test_raw_rows_match_the_phantom_of_their_seed(raw_dataset):
    row = raw_dataset["train"][0]
    index = int(row["patient_id"].split("-")[1])
    phantom = generate_chest_phantom(phantom_seed(42, index), shape=SHAPE)
    # NIfTI stores (x, y, z); the builder wrote the LPS array transposed.
    np.testing.assert_array_equal(np.asarray(row["image"].dataobj).transpose(2, 1, 0), phantom.hu)
    np.testing.assert_array_equal(
        np.asarray(row["lesion_mask"].dataobj).transpose(2, 1, 0).astype(bool), phantom.lesion_mask
    )
    assert row["report"] == phantom.report
    assert json.loads(row["findings"])[0]["diameter_mm"] == phantom.findings[0]["diameter_mm"]
    assert raw_dataset["train"].features["histology"].int2str(row["histology"]) == phantom.labels["histology"]
    assert row["survival_days"] == phantom.labels["survival_days"] and row["event"] == phantom.labels["event"]
    assert row["shape"] == list(SHAPE) and row["spacing"] == pytest.approx(phantom.spacing)


def test_labels_are_class_labels_with_the_phantom_vocabularies(raw_dataset):
    features = raw_dataset["train"].features
    assert features["histology"].names == list(HISTOLOGY_CLASSES)
    assert features["stage"].names == ["I", "II", "III", "IV"]
    assert features["egfr"].names == ["wildtype", "mutant"]


def test_preprocessed_rows_hold_float16_pixel_values_in_unit_range(preprocessed_dataset):
    dataset = preprocessed_dataset["train"]
    assert dataset.features["pixel_values"].dtype == "float16"
    row = dataset.with_format("numpy")[0]
    assert row["pixel_values"].shape == (16, 32, 32)
    assert 0.0 <= row["pixel_values"].min() and row["pixel_values"].max() <= 1.0
    assert row["crop_bbox"].shape == (3, 2)
    assert row["report"].startswith(("CT", "CHEST"))


def test_the_same_seed_builds_the_same_cohort(tmp_path):
    reports = []
    for attempt in range(2):
        builder = SyntheticLungCT(
            config_name="raw", num_samples=3, phantom_shape=SHAPE, cache_dir=str(tmp_path / f"cache{attempt}")
        )
        builder.download_and_prepare()
        reports.append(sorted(builder.as_dataset()["train"]["report"]))
    assert reports[0] == reports[1]


def test_num_samples_must_be_positive():
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticLungCT(config_name="raw", num_samples=0)
