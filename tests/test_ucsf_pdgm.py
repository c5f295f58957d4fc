"""Tests of the UCSF-PDGM builder on a fake TCIA package: 3- vs 4-digit ids, follow-ups, messy label values."""

import logging
import shutil

import pytest
from fake_collections_nifti import UCSF_HEADER, write_csv, write_fake_ucsf_pdgm

from datasets_scripts import UcsfPdgm
from datasets_scripts.common import DatasetLayoutError, DatasetValueError, non_empty_splits
from datasets_scripts.ucsf_pdgm import normalise_subject_id


@pytest.fixture(scope="module")
def fake_download(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucsf")
    return root, write_fake_ucsf_pdgm(root)


@pytest.fixture(scope="module")
def raw_dataset(fake_download, tmp_path_factory):
    root, _ = fake_download
    builder = UcsfPdgm(
        config_name="raw",
        data_dir=str(root),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        test_fraction=0.34,
        validation_fraction=0.0,
    )
    builder.download_and_prepare()
    return non_empty_splits(builder)


def rows_by_subject(dataset_dict):
    return {row["subject_id"]: (split, row) for split, dataset in dataset_dict.items() for row in dataset}


def test_three_digit_csv_ids_match_four_digit_folders():
    assert normalise_subject_id("UCSF-PDGM-004") == ("UCSF-PDGM-0004", "UCSF-PDGM-0004", False)
    assert normalise_subject_id("UCSF-PDGM-0120_FU") == ("UCSF-PDGM-0120_FU", "UCSF-PDGM-0120", True)


def test_every_session_becomes_an_example(raw_dataset):
    assert sorted(rows_by_subject(raw_dataset)) == [
        "UCSF-PDGM-0004",
        "UCSF-PDGM-0005",
        "UCSF-PDGM-0012",
        "UCSF-PDGM-0120",
        "UCSF-PDGM-0120_FU",
    ]


def test_follow_up_stays_in_the_split_of_its_patient(raw_dataset):
    rows = rows_by_subject(raw_dataset)
    assert rows["UCSF-PDGM-0120"][0] == rows["UCSF-PDGM-0120_FU"][0]
    assert rows["UCSF-PDGM-0120_FU"][1]["follow_up"] is True


def test_idh_variants_and_mgmt_and_codeletion_spellings(raw_dataset):
    rows = rows_by_subject(raw_dataset)
    features = next(iter(raw_dataset.values())).features
    name = lambda column, subject: features[column].int2str(rows[subject][1][column])  # noqa: E731
    assert name("idh", "UCSF-PDGM-0004") == "wildtype"
    assert name("idh", "UCSF-PDGM-0005") == "mutant"  # IDH1 p.R132H
    assert name("idh", "UCSF-PDGM-0012") == "mutant"  # mutated (NOS)
    assert name("codeletion_1p19q", "UCSF-PDGM-0005") == "co-deletion"  # written Co-deletion
    assert rows["UCSF-PDGM-0012"][1]["mgmt"] == -1  # unknown
    assert name("mgmt", "UCSF-PDGM-0120") == "indeterminate"
    assert name("who_grade", "UCSF-PDGM-0005") == "2"


def test_survival_and_blank_values(raw_dataset):
    rows = rows_by_subject(raw_dataset)
    assert rows["UCSF-PDGM-0004"][1]["survival_days"] == 389 and rows["UCSF-PDGM-0004"][1]["event"] == 1
    assert rows["UCSF-PDGM-0012"][1]["survival_days"] is None and rows["UCSF-PDGM-0012"][1]["mgmt_index"] is None
    assert rows["UCSF-PDGM-0012"][1]["extent_of_resection"] is None


def test_the_diagnosis_text_is_never_a_column(raw_dataset):
    for dataset in raw_dataset.values():
        assert not any("diagnosis" in column.lower() for column in dataset.column_names)
    for _, row in rows_by_subject(raw_dataset).values():
        assert not any("IDH-" in str(value) for value in row.values())


def test_raw_config_points_at_each_sequence(raw_dataset):
    _, row = rows_by_subject(raw_dataset)["UCSF-PDGM-0004"]
    assert row["FLAIR"].get_filename().endswith("UCSF-PDGM-0004_nifti/UCSF-PDGM-0004_FLAIR.nii.gz")
    assert row["tumor_segmentation"].shape == (28, 32, 20)


def test_preprocessed_config_stacks_normalised_sequences(fake_download, tmp_path):
    root, _ = fake_download
    builder = UcsfPdgm(config_name="preprocessed", data_dir=str(root), cache_dir=str(tmp_path), image_size=(8, 12, 12))
    builder.download_and_prepare()
    dataset = next(iter(non_empty_splits(builder).values()))
    row = dataset.with_format("numpy")[0]
    assert row["pixel_values"].shape == (4, 8, 12, 12)
    assert row["pixel_values"].min() >= 0 and row["pixel_values"].max() <= 1 and row["pixel_values"].max() > 0.5


def test_missing_sequence_skips_the_session(fake_download, tmp_path, caplog):
    root, _ = fake_download
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    next(copy.rglob("UCSF-PDGM-0005_T2.nii.gz")).unlink()
    builder = UcsfPdgm(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        builder.download_and_prepare()
    assert "UCSF-PDGM-0005" not in rows_by_subject(non_empty_splits(builder))
    assert "sequence file(s) ['T2'] missing" in caplog.text


def test_unrecognised_idh_value_is_an_error_not_a_guess(tmp_path):
    write_fake_ucsf_pdgm(
        tmp_path,
        rows=[
            {
                "ID": "UCSF-PDGM-007",
                "Sex": "M",
                "Age at MRI": "50",
                "WHO CNS Grade": "4",
                "MGMT status": "negative",
                "IDH": "maybe",
                "1-dead 0-alive": "1",
                "OS": "10",
            }
        ],
    )
    with pytest.raises(DatasetValueError, match="IDH value 'maybe'"):
        UcsfPdgm(
            config_name="raw",
            data_dir=str(tmp_path),
            cache_dir=str(tmp_path / "cache"),
            test_fraction=0.0,
            validation_fraction=0.0,
        ).download_and_prepare()


def test_missing_metadata_column_names_it(fake_download, tmp_path):
    root, _ = fake_download
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    table = next(copy.rglob("UCSF-PDGM-metadata_v5.csv"))
    write_csv(table, [name for name in UCSF_HEADER if name != "IDH"], [])
    with pytest.raises(DatasetLayoutError, match=r"lacks the column\(s\) \['IDH'\]"):
        UcsfPdgm(config_name="raw", data_dir=str(copy), cache_dir=str(tmp_path / "cache")).download_and_prepare()
