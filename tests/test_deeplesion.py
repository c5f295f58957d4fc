"""Tests of the DeepLesion builder on a fake download: 16-bit PNG slices in series folders and DL_info.csv."""

import logging
import shutil

import numpy as np
import pytest
from fake_collections_nifti import write_fake_deeplesion

from datasets_scripts import DeepLesion
from datasets_scripts.common import DatasetLayoutError, DatasetValueError, non_empty_splits


@pytest.fixture(scope="module")
def fake_download(tmp_path_factory):
    root = tmp_path_factory.mktemp("deeplesion")
    return root, write_fake_deeplesion(root)


@pytest.fixture(scope="module")
def raw_dataset(fake_download, tmp_path_factory):
    root, _ = fake_download
    builder = DeepLesion(config_name="raw", data_dir=str(root), cache_dir=str(tmp_path_factory.mktemp("cache")))
    builder.download_and_prepare()
    return builder.as_dataset()


def rows_by_file(dataset_dict):
    return {row["file_name"]: (split, row) for split, dataset in dataset_dict.items() for row in dataset}


def test_one_example_per_key_slice_with_all_its_lesions(raw_dataset, fake_download):
    _, expected = fake_download
    rows = rows_by_file(raw_dataset)
    assert sorted(rows) == sorted(expected)
    assert len(rows["000001_01_01_035.png"][1]["lesions"]) == 2


def test_train_val_test_codes_are_the_official_patient_splits(raw_dataset):
    rows = rows_by_file(raw_dataset)
    assert rows["000001_01_01_035.png"][0] == rows["000001_01_02_104.png"][0] == "train"
    assert rows["000002_01_01_009.png"][0] == "validation"
    assert rows["000003_02_01_055.png"][0] == "test"


def test_png_pixels_minus_32768_are_the_hu_volume_in_lps_order(raw_dataset, fake_download):
    _, expected = fake_download
    _, row = rows_by_file(raw_dataset)["000002_01_01_009.png"]
    volume = np.asarray(row["image"].dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(volume, expected["000002_01_01_009.png"][0])
    assert row["spacing"] == pytest.approx([320 / 12, 5.6, 5.6], rel=1e-4)


def test_key_slice_position_in_the_volume(raw_dataset):
    _, row = rows_by_file(raw_dataset)["000002_01_01_009.png"]
    assert row["slice_range"] == [5, 16]
    assert row["key_slice_z"] == 16 - 9  # the stack is reversed: the last slice number is z = 0


def test_lesion_vectors_and_types_are_parsed(raw_dataset):
    features = raw_dataset["train"].features
    _, row = rows_by_file(raw_dataset)["000002_01_01_009.png"]
    lesion = row["lesions"][0]
    assert lesion["bounding_box"] == pytest.approx([30.0, 12.0, 38.0, 22.0])
    assert features["lesions"].feature["lesion_type"].int2str(lesion["lesion_type"]) == "lung"
    _, unknown = rows_by_file(raw_dataset)["000001_01_01_035.png"]
    assert features["lesions"].feature["lesion_type"].int2str(unknown["lesions"][0]["lesion_type"]) == "unknown"


def test_missing_age_is_null_and_sex_is_a_class_label(raw_dataset):
    _, row = rows_by_file(raw_dataset)["000003_02_01_055.png"]
    assert row["patient_age"] is None
    assert raw_dataset["test"].features["patient_sex"].int2str(row["patient_sex"]) == "F"


def test_unreadable_slice_skips_its_key_slice(fake_download, tmp_path, caplog):
    root, _ = fake_download
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "Images_png/000002_01_01/010.png").write_bytes(b"\x89PNG broken")
    (copy / "Images_png/000003_02_01/050.png").unlink()
    builder = DeepLesion(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        builder.download_and_prepare()
    assert sorted(rows_by_file(non_empty_splits(builder))) == ["000001_01_01_035.png", "000001_01_02_104.png"]
    assert "010.png is unreadable" in caplog.text and "slice 050.png of 000003_02_01 is missing" in caplog.text


def test_patient_in_two_official_splits_is_an_error(fake_download, tmp_path):
    root, _ = fake_download
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    table = copy / "DL_info.csv"
    lines = table.read_text().splitlines()
    lines[3] = lines[3][: lines[3].rfind(",")] + ",3"  # patient 1's second series moved to test
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetValueError, match="patient '1' is listed in both"):
        DeepLesion(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache")).download_and_prepare()


def test_missing_images_folder_is_a_layout_error(tmp_path):
    (tmp_path / "DL_info.csv").write_text("File_name\n")
    with pytest.raises(DatasetLayoutError, match="Images_png"):
        DeepLesion(config_name="raw", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache")).download_and_prepare()


def test_clinical_text_option_describes_sex_age_and_lesion_types(fake_download, tmp_path):
    root, _ = fake_download
    builder = DeepLesion(config_name="raw", data_dir=str(root), cache_dir=str(tmp_path / "cache"), clinical_text=True)
    builder.download_and_prepare()
    _, row = rows_by_file(non_empty_splits(builder))["000002_01_01_009.png"]
    assert row["text"] == "Sex: male. Age: 52. Lesion types: lung."
