"""Tests of the NSCLC Radiogenomics builder on a fake download (classic UID folders, no metadata.csv, old file names)."""

import datetime

import numpy as np
import pytest

import fake_tcia
from datasets_scripts.common import DatasetLayoutError, DatasetValueError, SkipCounter
from datasets_scripts.nsclc_radiogenomics import NsclcRadiogenomics, read_radiogenomics_clinical


CLINICAL_NAME = "NSCLCR01Radiogenomic_DATA_LABELS_2018-05-22_1500-shifted.csv"
LOCATIONS = ["RUL", "RML", "RLL", "LUL", "LLL", "L Lingula", "Unknown"]
CLINICAL_HEADER = (
    ["Case ID", "Patient affiliation", "Age at Histological Diagnosis", "Weight (lbs)", "Gender", "Ethnicity",
     "Smoking status", "Pack Years", "Quit Smoking Year", "%GG"]
    + [f"Tumor Location (choice={name})" for name in LOCATIONS]
    + ["Histology ", "Pathological T stage", "Pathological N stage", "Pathological M stage", "Histopathological Grade",
       "Lymphovascular invasion", "Pleural invasion (elastic, visceral, or parietal)", "EGFR mutation status",
       "KRAS mutation status", "ALK translocation status", "Adjuvant Treatment", "Chemotherapy", "Radiation",
       "Recurrence", "Recurrence Location", "Date of Recurrence", "Date of Last Known Alive", "Survival Status",
       "Date of Death", "Time to Death (days)", "CT Date", "Days between CT and surgery", "PET Date"]
)  # fmt: skip


def clinical_row(case_id, affiliation, age, weight, gender, smoking, pack_years, locations, histology, t, n, m, egfr, kras,
                 alk, recurrence, last_alive, status, death, time_to_death, ct_date, days_to_surgery):  # fmt: skip
    checked = ["Checked" if name in locations else "Unchecked" for name in LOCATIONS]
    return (
        [case_id, affiliation, age, weight, gender, "Caucasian", smoking, pack_years, "Not Collected", "0%"] + checked
        + [histology, t, n, m, "G2 Moderately differentiated", "Absent", "Absent", egfr, kras, alk, "No", "No", "No",
           recurrence, "", "", last_alive, status, death, time_to_death, ct_date, days_to_surgery, ""]
    )  # fmt: skip


CLINICAL_ROWS = [
    clinical_row("R01-001", "VA", "68", "180", "Male", "Former", "40", ["RUL"], "Adenocarcinoma", "T1a", "N0", "M0",
                 "Mutant", "Wildtype", "Wildtype", "no", "03/15/1999", "Dead", "05/20/1998", "420", "01/10/1997", "30"),
    clinical_row("R01-002", "Stanford", "55", "Not Collected", "Female", "Nonsmoker", "Not Collected", ["LUL", "L Lingula"],
                 "Squamous cell carcinoma", "T2a", "N1", "Not Collected", "Unknown", "Not collected", "Indeterminate",
                 "yes", "06/01/2001", "Alive", "", "", "02/01/2000", "15"),
    clinical_row("AMC-001", "AMC", "71", "150", "Male", "Current", "55", [], "NSCLC NOS (not otherwise specified)",
                 "Tis", "N2", "M1b", "Wildtype", "Mutant", "Translocated", "Not collected", "", "Dead", "12/31/2012", "",
                 "01/01/2012", "10"),
]  # fmt: skip


@pytest.fixture(scope="module")
def chests():
    return [fake_tcia.phantom(seed) for seed in (21, 22, 23, 24)]


@pytest.fixture(scope="module")
def radiogenomics_download(tmp_path_factory, chests):
    """R01-001 with a CT and a `CT FUSION` CT, R01-002 with CT + SEG, AMC-001 with a CT; no metadata.csv."""
    root = tmp_path_factory.mktemp("radiogenomics")
    fake = fake_tcia.FakeTciaDownload(root, "NSCLC Radiogenomics", naming="classic", file_naming="old")
    study = fake.add_study("R01-001")
    fake.add_ct(study, chests[0].hu, chests[0].spacing, chests[0].origin, series_number=2, description="CT Thorax")
    fake.add_ct(study, chests[1].hu, chests[1].spacing, chests[1].origin, series_number=5, description="CT FUSION")
    study = fake.add_study("R01-002")
    fake.add_ct(study, chests[2].hu, chests[2].spacing, chests[2].origin)
    fake.add_seg(study, {"Neoplasm, Primary": chests[2].lesion_mask}, chests[2].spacing, chests[2].origin)
    fake.add_ct(fake.add_study("AMC-001"), chests[3].hu, chests[3].spacing, chests[3].origin)
    fake_tcia.write_csv(root / CLINICAL_NAME, CLINICAL_HEADER, CLINICAL_ROWS)
    return root


@pytest.fixture(scope="module")
def raw_build(radiogenomics_download, tmp_path_factory):
    builder = NsclcRadiogenomics(data_dir=str(radiogenomics_download), cache_dir=str(tmp_path_factory.mktemp("cache")),
                                 validation_fraction=0.34, test_fraction=0.34, seed=3)  # fmt: skip
    builder.download_and_prepare()
    return builder, builder.as_dataset()


def _rows(dataset_dict):
    return [dict(row, split=name) for name, split in dataset_dict.items() for row in split]


def _patient(dataset_dict, patient_id):
    return next(row for row in _rows(dataset_dict) if row["patient_id"] == patient_id)


def _decode(dataset_dict, row, name):
    feature = next(iter(dataset_dict.values())).features[name]
    return None if row[name] is None else feature.int2str(row[name])


def test_every_ct_series_is_a_row_and_a_patient_stays_in_one_split(raw_build):
    _, dataset = raw_build
    rows = _rows(dataset)
    assert sorted(row["patient_id"] for row in rows) == ["AMC-001", "R01-001", "R01-001", "R01-002"]
    assert len({row["split"] for row in rows if row["patient_id"] == "R01-001"}) == 1
    assert len({row["split"] for row in rows}) == 3
    assert {row["series_description"] for row in rows if row["patient_id"] == "R01-001"} == {"CT Thorax", "CT FUSION"}


def test_mutation_histology_and_stage_labels_use_the_real_vocabulary(raw_build):
    _, dataset = raw_build
    row = _patient(dataset, "AMC-001")
    decoded = {name: _decode(dataset, row, name) for name in ("egfr", "kras", "alk", "histology", "t_stage", "n_stage", "m_stage", "smoking_status", "gender")}
    assert decoded == {
        "egfr": "Wildtype", "kras": "Mutant", "alk": "Translocated", "histology": "NSCLC NOS (not otherwise specified)",
        "t_stage": "Tis", "n_stage": "N2", "m_stage": "M1b", "smoking_status": "Current", "gender": "Male",
    }  # fmt: skip


def test_histology_header_with_trailing_space_is_read(raw_build):
    _, dataset = raw_build
    assert _decode(dataset, _patient(dataset, "R01-001"), "histology") == "Adenocarcinoma"


def test_not_collected_and_unknown_values_are_missing(raw_build):
    _, dataset = raw_build
    row = _patient(dataset, "R01-002")
    assert row["egfr"] is None and row["kras"] is None and row["m_stage"] is None
    assert row["weight_lbs"] is None and row["pack_years"] is None
    assert _patient(dataset, "AMC-001")["recurrence"] is None


def test_alk_value_outside_the_documented_vocabulary_is_left_empty_and_counted(raw_build):
    builder, dataset = raw_build
    assert _patient(dataset, "R01-002")["alk"] is None
    assert builder.unrecognised_values.total == 1 and "Indeterminate" in builder.unrecognised_values.skipped[0][1]


def test_death_with_time_to_death_uses_it_as_is(raw_build):
    _, dataset = raw_build
    row = _patient(dataset, "R01-001")
    assert (row["survival_days"], row["survival_days_derived"], row["event"]) == (420, False, 1)


def test_censored_survival_is_derived_from_last_alive_minus_surgery_date(raw_build):
    _, dataset = raw_build
    row = _patient(dataset, "R01-002")
    expected = (datetime.date(2001, 6, 1) - datetime.date(2000, 2, 1)).days - 15
    assert (row["survival_days"], row["survival_days_derived"], row["event"]) == (expected, True, 0)


def test_death_without_time_to_death_is_derived_from_the_date_of_death(raw_build):
    _, dataset = raw_build
    row = _patient(dataset, "AMC-001")
    expected = (datetime.date(2012, 12, 31) - datetime.date(2012, 1, 1)).days - 10
    assert (row["survival_days"], row["survival_days_derived"], row["event"]) == (expected, True, 1)


def test_tumour_location_choices_become_a_list(raw_build):
    _, dataset = raw_build
    assert _patient(dataset, "R01-002")["tumor_locations"] == ["LUL", "L Lingula"]
    assert _patient(dataset, "AMC-001")["tumor_locations"] == []


def test_seg_segment_labels_are_listed_for_the_patient(raw_build):
    _, dataset = raw_build
    assert _patient(dataset, "R01-002")["segment_labels"] == ["Neoplasm, Primary"]
    assert _patient(dataset, "AMC-001")["segment_labels"] == []


def test_single_segment_seg_becomes_the_tumour_mask_on_the_ct_grid(raw_build, chests):
    _, dataset = raw_build
    row = _patient(dataset, "R01-002")
    np.testing.assert_array_equal(fake_tcia.nifti_array_lps(row["tumor_mask"]).astype(bool), chests[2].lesion_mask)
    assert row["tumor_volume_ml"] == pytest.approx(chests[2].lesion_mask.sum() * np.prod(chests[2].spacing) / 1000, rel=1e-4)
    assert _patient(dataset, "AMC-001")["tumor_mask"] is None and _patient(dataset, "AMC-001")["tumor_bbox"] is None


def test_last_alive_before_surgery_is_an_error_naming_the_row(tmp_path):
    row = list(CLINICAL_ROWS[1])
    row[CLINICAL_HEADER.index("Date of Last Known Alive")] = "01/01/1999"
    fake_tcia.write_csv(tmp_path / CLINICAL_NAME, CLINICAL_HEADER, [row])
    with pytest.raises(DatasetValueError, match="R01-002: Date of Last Known Alive lies .* before surgery"):
        read_radiogenomics_clinical(tmp_path / CLINICAL_NAME, SkipCounter("values"))


def test_missing_histology_column_is_an_error_naming_it(tmp_path):
    index = CLINICAL_HEADER.index("Histology ")
    header = CLINICAL_HEADER[:index] + CLINICAL_HEADER[index + 1 :]
    rows = [row[:index] + row[index + 1 :] for row in CLINICAL_ROWS]
    fake_tcia.write_csv(tmp_path / CLINICAL_NAME, header, rows)
    with pytest.raises(DatasetLayoutError, match=r"lacks the column\(s\) \['Histology'\]"):
        read_radiogenomics_clinical(tmp_path / CLINICAL_NAME, SkipCounter("values"))


def test_preprocessed_config_stores_pixel_values_with_mutation_labels(radiogenomics_download, tmp_path):
    builder = NsclcRadiogenomics(data_dir=str(radiogenomics_download), config_name="preprocessed", image_size=(16, 32, 32),
                                 cache_dir=str(tmp_path / "cache"), validation_fraction=0.0, test_fraction=0.0)  # fmt: skip
    builder.download_and_prepare()
    train = builder.as_dataset()["train"]
    assert train.num_rows == 4 and "image" not in train.column_names
    row = next(row for row in train if row["patient_id"] == "R01-001")
    pixels = np.asarray(row["pixel_values"], dtype=np.float32)
    assert pixels.shape == (16, 32, 32) and 0.0 <= pixels.min() < pixels.max() <= 1.0
    assert train.features["egfr"].int2str(row["egfr"]) == "Mutant"
