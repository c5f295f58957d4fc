"""Tests of the CT-RATE builder on a fake copy of the Hub repository layout (blank-header raw volumes, metadata)."""

import logging
import shutil

import numpy as np
import pytest
from fake_collections_nifti import CT_RATE_FINDINGS, write_corrupt_gzip, write_csv, write_fake_ct_rate

from datasets_scripts import CtRate
from datasets_scripts.common import DatasetLayoutError, DatasetValueError, non_empty_splits, read_csv_table
from datasets_scripts.ct_rate import CtRateVolumeError, hounsfield_from_stored


@pytest.fixture(scope="module")
def fake_download(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctrate")
    expected = write_fake_ct_rate(root, fixed_volumes=("train_2_a_1",))
    return root, expected


@pytest.fixture(scope="module")
def raw_dataset(fake_download, tmp_path_factory):
    root, _ = fake_download
    builder = CtRate(config_name="raw", data_dir=str(root), cache_dir=str(tmp_path_factory.mktemp("cache")))
    builder.download_and_prepare()
    return builder.as_dataset()


def rows_by_volume(dataset_dict):
    return {row["volume_name"]: (split, row) for split, dataset in dataset_dict.items() for row in dataset}


def test_official_train_and_valid_become_train_and_validation(raw_dataset):
    assert set(raw_dataset) == {"train", "validation"}
    rows = rows_by_volume(raw_dataset)
    assert {name for name, (split, _) in rows.items() if split == "validation"} == {"valid_1_a_1", "valid_2_a_1"}


def test_all_reconstructions_of_a_patient_share_the_patient_id(raw_dataset):
    rows = rows_by_volume(raw_dataset)
    assert rows["train_1_a_1"][1]["patient_id"] == rows["train_1_a_2"][1]["patient_id"] == "train_1"


def test_raw_values_are_rescaled_to_hu_with_metadata_spacing(fake_download):
    root, expected = fake_download
    from datasets_scripts.common import read_csv_table
    from datasets_scripts.ct_rate import read_ct_rate_volume

    metadata = {
        row["VolumeName"]: row for row in read_csv_table(root / "dataset/metadata/train_metadata.csv", ["VolumeName"])
    }
    volume = read_ct_rate_volume(
        root / "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz", metadata["train_1_a_1.nii.gz"]
    )
    np.testing.assert_array_equal(volume["hu"], expected["train_1_a_1"]["hu"])
    assert volume["spacing"] == pytest.approx(expected["train_1_a_1"]["spacing"])
    assert volume["stored_as_hounsfield"] is False


def test_fixed_copy_with_geometry_is_read_in_lps_and_not_rescaled_twice(raw_dataset, fake_download):
    _, expected = fake_download
    _, row = rows_by_volume(raw_dataset)["train_2_a_1"]
    assert row["stored_as_hounsfield"] is True
    assert "train_fixed" in row["image"].get_filename()
    assert row["spacing"] == pytest.approx(expected["train_2_a_1"]["spacing"], rel=1e-5)
    assert row["origin"] == pytest.approx([-160.0, -170.0, -300.0], abs=1e-3)


def test_eighteen_findings_are_class_labels(raw_dataset, fake_download):
    _, expected = fake_download
    _, row = rows_by_volume(raw_dataset)["valid_2_a_1"]
    features = raw_dataset["validation"].features
    assert features["lung_nodule"].names == ["absent", "present"]
    assert [row[name.lower().replace(" ", "_")] for name in CT_RATE_FINDINGS] == expected["valid_2_a_1"]["labels"]


def test_report_joins_sections_and_drops_not_given(raw_dataset):
    _, given = rows_by_volume(raw_dataset)["train_1_a_1"]
    _, not_given = rows_by_volume(raw_dataset)["train_1_a_2"]
    assert given["report"].startswith("Clinical information: Cough for two weeks.\nTechnique: Non-contrast chest CT.")
    assert not_given["report"].startswith("Technique:") and not_given["clinical_information"] is None
    assert given["patient_age"] == 30 and given["patient_sex"] == "F"


def test_preprocessed_config_gives_float16_crops(fake_download, tmp_path):
    root, _ = fake_download
    builder = CtRate(config_name="preprocessed", data_dir=str(root), cache_dir=str(tmp_path), image_size=(12, 24, 24))
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="validation")
    assert dataset.features["pixel_values"].dtype == "float16"
    assert dataset.with_format("numpy")[0]["pixel_values"].shape == (12, 24, 24)


def test_missing_corrupt_and_spacing_less_volumes_are_skipped_and_logged(fake_download, tmp_path, caplog):
    root, _ = fake_download
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "dataset/train/train_3/train_3_b/train_3_b_1.nii.gz").unlink()
    write_corrupt_gzip(copy / "dataset/valid/valid_1/valid_1_a/valid_1_a_1.nii.gz")
    table = copy / "dataset/metadata/train_metadata.csv"
    rows = read_csv_table(table, ["VolumeName", "ZSpacing"])
    for row in rows:
        if row["VolumeName"] == "train_1_a_2.nii.gz":
            row["ZSpacing"] = "nan"
    write_csv(table, list(rows[0]), [list(row.values()) for row in rows])
    builder = CtRate(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        builder.download_and_prepare()
    assert sorted(rows_by_volume(non_empty_splits(builder))) == ["train_1_a_1", "train_2_a_1", "valid_2_a_1"]
    assert "listed in the reports table but not downloaded" in caplog.text
    assert "unreadable NIfTI" in caplog.text
    assert "no usable XYSpacing/ZSpacing" in caplog.text


def test_missing_label_column_is_a_layout_error(fake_download, tmp_path):
    root, _ = fake_download
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    table = copy / "dataset/multi_abnormality_labels/valid_predicted_labels.csv"
    table.write_text(table.read_text().replace("Lung nodule", "Nodule"))
    with pytest.raises(
        DatasetLayoutError, match=r"valid_predicted_labels\.csv lacks the column\(s\) \['Lung nodule'\]"
    ):
        CtRate(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache")).download_and_prepare()


def test_values_that_are_neither_hu_nor_rescalable_are_refused():
    with pytest.raises(CtRateVolumeError, match="cannot tell whether the values are HU"):
        hounsfield_from_stored(np.full((4, 4, 4), 500.0, dtype=np.float32), 1.0, -1024.0, "x.nii.gz")


def test_label_that_is_not_0_or_1_stops_the_build(fake_download, tmp_path):
    root, _ = fake_download
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    table = copy / "dataset/multi_abnormality_labels/train_predicted_labels.csv"
    rows = read_csv_table(table, ["VolumeName", "Lung nodule"])
    rows[0]["Lung nodule"] = "0.7"
    write_csv(table, list(rows[0]), [list(row.values()) for row in rows])
    with pytest.raises(DatasetValueError, match="column .Lung nodule.: .0.7. is not a whole number"):
        CtRate(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache")).download_and_prepare()


def test_fixed_copy_voxels_equal_the_original_hu(fake_download):
    root, expected = fake_download
    from datasets_scripts.ct_rate import read_ct_rate_volume

    metadata = {
        row["VolumeName"]: row for row in read_csv_table(root / "dataset/metadata/train_metadata.csv", ["VolumeName"])
    }
    path = root / "dataset/train_fixed/train_2/train_2_a/train_2_a_1.nii.gz"
    volume = read_ct_rate_volume(path, metadata["train_2_a_1.nii.gz"])
    np.testing.assert_array_equal(volume["hu"], expected["train_2_a_1"]["hu"])
