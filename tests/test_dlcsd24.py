"""Tests of the DLCSD24 builder on a fake download with the real file names, nesting and CSV header."""

import logging
import shutil

import pytest
from fake_collections_nifti import DLCSD24_HEADER, write_corrupt_gzip, write_csv, write_fake_dlcsd24

from datasets_scripts import Dlcsd24
from datasets_scripts.common import DatasetLayoutError, non_empty_splits


@pytest.fixture(scope="module")
def fake_download(tmp_path_factory):
    root = tmp_path_factory.mktemp("dlcsd24")
    expected = write_fake_dlcsd24(root)
    return root, expected


@pytest.fixture(scope="module")
def raw_dataset(fake_download, tmp_path_factory):
    root, _ = fake_download
    builder = Dlcsd24(config_name="raw", data_dir=str(root), cache_dir=str(tmp_path_factory.mktemp("cache")))
    builder.download_and_prepare()
    return builder.as_dataset()


def all_rows(dataset_dict):
    return {row["patient_id"]: (split, row) for split, dataset in dataset_dict.items() for row in dataset}


def test_every_volume_becomes_one_example(raw_dataset, fake_download):
    _, expected = fake_download
    assert sorted(all_rows(raw_dataset)) == sorted(expected)


def test_benchmark_split_tokens_become_official_splits(raw_dataset):
    rows = all_rows(raw_dataset)
    assert rows["DLCS_0001"][0] == "train" and rows["DLCS_0002"][0] == "train"
    assert rows["DLCS_0003"][0] == "validation"  # token "val"
    assert rows["DLCS_0004"][0] == "test"


def test_world_coordinates_become_the_right_voxels(raw_dataset, fake_download):
    _, expected = fake_download
    for patient_id, (_, row) in all_rows(raw_dataset).items():
        for nodule, truth in zip(row["nodules"], expected[patient_id]):
            assert nodule["nodule_id"] == truth["nodule_id"]
            # The file stores voxels in RAS order; the centre must land on the tumour of the LPS array.
            assert nodule["center_voxel"] == pytest.approx(truth["center_voxel"], abs=0.6)


def test_malignancy_labels_are_read_per_nodule_and_per_volume(raw_dataset, fake_download):
    _, expected = fake_download
    for patient_id, (_, row) in all_rows(raw_dataset).items():
        assert [nodule["malignancy"] for nodule in row["nodules"]] == [
            truth["malignancy"] for truth in expected[patient_id]
        ]
        assert row["malignancy"] == max(truth["malignancy"] for truth in expected[patient_id])


def test_raw_config_keeps_the_nifti_and_lps_geometry(raw_dataset):
    _, row = all_rows(raw_dataset)["DLCS_0001"]
    assert row["image"].shape == (64, 64, 24)
    assert row["shape"] == [24, 64, 64]
    assert row["direction"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert row["origin"][0] == pytest.approx(-151.0)


def test_preprocessed_config_stores_float16_crops(fake_download, tmp_path):
    root, _ = fake_download
    builder = Dlcsd24(config_name="preprocessed", data_dir=str(root), cache_dir=str(tmp_path), image_size=(12, 24, 24))
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train")
    assert dataset.features["pixel_values"].dtype == "float16"
    row = dataset.with_format("numpy")[0]
    assert row["pixel_values"].shape == (12, 24, 24)
    assert 0.0 <= row["pixel_values"].min() and row["pixel_values"].max() <= 1.0
    assert row["crop_bbox"].shape == (3, 2)


def test_clinical_text_uses_metadata_fields_but_not_the_label(fake_download, tmp_path):
    root, _ = fake_download
    builder = Dlcsd24(config_name="raw", data_dir=str(root), cache_dir=str(tmp_path), clinical_text=True)
    builder.download_and_prepare()
    row = builder.as_dataset(split="test")[0]
    assert row["text"].startswith("Sex: M. Age: 59. Number of annotated nodules:")
    assert "malignan" not in row["text"].lower()


def copy_of_download(fake_download, tmp_path):
    import shutil

    root, _ = fake_download
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    return copy


def test_missing_annotation_column_names_the_file_and_column(fake_download, tmp_path):
    copy = copy_of_download(fake_download, tmp_path)
    header = [name for name in DLCSD24_HEADER if name != "Malignant_lbl"]
    write_csv(copy / "DLCSD24_Annotations.csv", header, [["DLCS_0001"] + [""] * (len(header) - 1)])
    with pytest.raises(DatasetLayoutError, match=r"DLCSD24_Annotations\.csv lacks the column\(s\) \['Malignant_lbl'\]"):
        Dlcsd24(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache")).download_and_prepare()


def test_listed_but_absent_and_corrupt_volumes_are_skipped_and_logged(fake_download, tmp_path, caplog):
    copy = copy_of_download(fake_download, tmp_path)
    (copy / "subset01" / "DLCS_0002.nii.gz").unlink()
    write_corrupt_gzip(copy / "subset02" / "DLCS_0005.nii.gz")
    builder = Dlcsd24(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        builder.download_and_prepare()
    names = sorted(all_rows(non_empty_splits(builder)))
    assert names == ["DLCS_0001", "DLCS_0003", "DLCS_0004"]
    assert "DLCS_0002.nii.gz is listed in DLCSD24_Annotations.csv but absent" in caplog.text
    assert "unreadable volume" in caplog.text


def test_nodule_outside_its_volume_skips_the_volume(fake_download, tmp_path, caplog):
    copy = copy_of_download(fake_download, tmp_path)
    table = (copy / "DLCSD24_Annotations.csv").read_text().splitlines()
    fields = table[1].split(",")
    fields[3] = "9999.00"
    table[1] = ",".join(fields)
    (copy / "DLCSD24_Annotations.csv").write_text("\n".join(table) + "\n")
    builder = Dlcsd24(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        builder.download_and_prepare()
    assert fields[0] not in all_rows(non_empty_splits(builder))
    assert "falls outside the volume" in caplog.text


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="pass data_dir"):
        Dlcsd24(config_name="raw", cache_dir=str(tmp_path)).download_and_prepare()


def test_identical_volumes_under_two_patients_are_reported(fake_download, tmp_path, caplog):
    copy = copy_of_download(fake_download, tmp_path)
    shutil.copy(copy / "subset01" / "DLCS_0001.nii.gz", copy / "subset02" / "DLCS_0006.nii.gz")
    table = copy / "DLCSD24_Annotations.csv"
    first_row = table.read_text().splitlines()[1]
    table.write_text(table.read_text() + first_row.replace("DLCS_0001", "DLCS_0006") + "\n")
    builder = Dlcsd24(
        config_name="raw",
        data_dir=str(copy),
        cache_dir=str(tmp_path / "cache"),
        test_fraction=0.0,
        validation_fraction=0.0,
    )
    with caplog.at_level(logging.WARNING):
        builder.download_and_prepare()
    assert "duplicates" in caplog.text and "DLCS_0006" in caplog.text and "DLCS_0001" in caplog.text
