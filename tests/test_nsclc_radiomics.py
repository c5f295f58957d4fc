"""Tests of the NSCLC-Radiomics (Lung1) builder on a fake NBIA download with real DICOM CT, SEG and RTSTRUCT files."""

import numpy as np
import pytest

import fake_tcia
from datasets_scripts.common import DatasetLayoutError, DatasetValueError
from datasets_scripts.nsclc_radiomics import CLINICAL_COLUMNS, NsclcRadiomics, read_lung1_clinical, rtstruct_roi_mask
from modeling_lucafound.ct_io import CTVolume


CLINICAL_NAME = "NSCLC-Radiomics-Lung1.clinical-version3-Oct-2019.csv"
# Official header plus a non-official column some copies add; T written `2` and `2.0`; blanks and `NA`.
CLINICAL_HEADER = list(CLINICAL_COLUMNS) + ["Clinical.T.Stage.original"]
CLINICAL_ROWS = [
    ["LUNG1-001", "78.7515", "2", "3", "0", "IIIb", "large cell", "male", "2165", "1", "T2"],
    ["LUNG1-002", "83.8001", "2.0", "0", "0", "I", "squamous cell carcinoma", "male", "155", "1", "T2"],
    ["LUNG1-003", "", "4", "0", "0", "IIIb", "", "female", "256", "0", "T4"],
    ["LUNG1-004", "NA", "NA", "NA", "NA", "NA", "NA", "male", "100", "0", ""],
]


@pytest.fixture(scope="module")
def chests():
    return {patient: fake_tcia.phantom(seed) for patient, seed in (("LUNG1-001", 11), ("LUNG1-002", 12), ("LUNG1-003", 13))}


@pytest.fixture(scope="module")
def lung1_download(tmp_path_factory, chests):
    """LUNG1-001 (GTV in SEG), LUNG1-002 (SEG frames one slice off the CT grid), LUNG1-003 (no GTV, like LUNG1-128)."""
    root = tmp_path_factory.mktemp("lung1")
    fake = fake_tcia.FakeTciaDownload(root, "NSCLC-Radiomics")
    for patient_id, chest in chests.items():
        study = fake.add_study(patient_id)
        ct = fake.add_ct(study, chest.hu, chest.spacing, chest.origin)
        lungs = chest.hu < -600
        if patient_id == "LUNG1-003":
            fake.add_seg(study, {"Lung-Left": lungs, "Lung-Right": lungs}, chest.spacing, chest.origin)
        else:
            fake.add_seg(study, {"GTV-1": chest.lesion_mask, "Lung-Left": lungs}, chest.spacing, chest.origin,
                         z_offset=1 if patient_id == "LUNG1-002" else 0)  # fmt: skip
        contour = np.array([[0.0, 0.0, chest.origin[2]], [10.0, 0.0, chest.origin[2]], [10.0, 10.0, chest.origin[2]]])
        rois = {"Lung-Left": [contour]} if patient_id == "LUNG1-003" else {"GTV-1": [contour], "Lung-Left": [contour]}
        fake.add_rtstruct(study, rois, ct["series_uid"])
    fake.write_metadata(windows_paths=True)
    fake_tcia.write_csv(root / CLINICAL_NAME, CLINICAL_HEADER, CLINICAL_ROWS)
    return root


def _rows_by_patient(dataset_dict):
    return {row["patient_id"]: row for split in dataset_dict.values() for row in split}


@pytest.fixture(scope="module")
def raw_build(lung1_download, tmp_path_factory):
    builder = NsclcRadiomics(data_dir=str(lung1_download), cache_dir=str(tmp_path_factory.mktemp("cache")),
                             validation_fraction=0.0, test_fraction=0.34)  # fmt: skip
    builder.download_and_prepare()
    return builder, builder.as_dataset()


@pytest.fixture(scope="module")
def preprocessed_build(lung1_download, tmp_path_factory):
    builder = NsclcRadiomics(data_dir=str(lung1_download), config_name="preprocessed", image_size=(16, 32, 32),
                             clinical_text=True, cache_dir=str(tmp_path_factory.mktemp("cache")))  # fmt: skip
    builder.download_and_prepare()
    return builder, builder.as_dataset()


def test_every_patient_with_a_ct_is_one_row_in_exactly_one_split(raw_build):
    _, dataset = raw_build
    per_split = {name: set(split["patient_id"]) for name, split in dataset.items()}
    assert sorted(set.union(*per_split.values())) == ["LUNG1-001", "LUNG1-002", "LUNG1-003"]
    assert sum(len(patients) for patients in per_split.values()) == 3
    assert set(per_split) == {"train", "test"}


def test_clinical_labels_decode_to_the_collection_vocabulary(raw_build):
    _, dataset = raw_build
    features = dataset["train"].features
    row = _rows_by_patient(dataset)["LUNG1-001"]
    decoded = {name: features[name].int2str(row[name]) for name in ("t_stage", "n_stage", "m_stage", "overall_stage", "histology", "gender")}
    assert decoded == {"t_stage": "T2", "n_stage": "N3", "m_stage": "M0", "overall_stage": "IIIb", "histology": "large cell", "gender": "male"}
    assert row["survival_days"] == 2165 and row["event"] == 1 and row["age"] == pytest.approx(78.7515)


def test_t_stage_written_as_2_point_0_reads_as_t2(raw_build):
    _, dataset = raw_build
    row = _rows_by_patient(dataset)["LUNG1-002"]
    assert dataset["train"].features["t_stage"].int2str(row["t_stage"]) == "T2"


def test_blank_clinical_values_are_missing_not_guessed(raw_build):
    _, dataset = raw_build
    row = _rows_by_patient(dataset)["LUNG1-003"]
    assert row["age"] is None and row["histology"] is None and row["event"] == 0


def test_na_clinical_values_are_missing(lung1_download):
    labels = read_lung1_clinical(lung1_download / CLINICAL_NAME)["LUNG1-004"]
    assert [labels[name] for name in ("age", "t_stage", "n_stage", "m_stage", "overall_stage", "histology")] == [None] * 6


def test_image_is_the_ct_in_hounsfield_units_with_its_lps_geometry(raw_build, chests):
    _, dataset = raw_build
    row = _rows_by_patient(dataset)["LUNG1-001"]
    chest = chests["LUNG1-001"]
    np.testing.assert_array_equal(fake_tcia.nifti_array_lps(row["image"]), chest.hu)
    np.testing.assert_allclose(fake_tcia.nifti_world_lps(row["image"], (3, 5, 7)),
                               np.asarray(chest.origin) + np.array([7, 5, 3]) * np.asarray(chest.spacing)[::-1], atol=1e-3)  # fmt: skip
    assert row["shape"] == list(chest.hu.shape) and row["spacing"] == pytest.approx(chest.spacing)


def test_gtv_mask_from_the_seg_covers_the_tumour_voxels(raw_build, chests):
    _, dataset = raw_build
    row = _rows_by_patient(dataset)["LUNG1-001"]
    chest = chests["LUNG1-001"]
    mask = fake_tcia.nifti_array_lps(row["gtv_mask"]).astype(bool)
    np.testing.assert_array_equal(mask, chest.lesion_mask)
    assert row["gtv_volume_ml"] == pytest.approx(chest.lesion_mask.sum() * np.prod(chest.spacing) / 1000, rel=1e-4)
    low = [int(np.nonzero(chest.lesion_mask.any(axis=tuple(a for a in range(3) if a != axis)))[0][0]) for axis in range(3)]
    assert [bounds[0] for bounds in row["gtv_bbox"]] == low


def test_seg_frames_off_the_ct_grid_are_placed_by_their_position(raw_build, chests):
    _, dataset = raw_build
    mask = fake_tcia.nifti_array_lps(_rows_by_patient(dataset)["LUNG1-002"]["gtv_mask"]).astype(bool)
    expected = np.zeros_like(chests["LUNG1-002"].lesion_mask)
    expected[1:] = chests["LUNG1-002"].lesion_mask[:-1]
    np.testing.assert_array_equal(mask, expected)


def test_patient_without_a_gtv_segment_has_empty_gtv_columns(raw_build):
    _, dataset = raw_build
    row = _rows_by_patient(dataset)["LUNG1-003"]
    assert row["gtv_mask"] is None and row["gtv_volume_ml"] is None and row["gtv_bbox"] is None and row["gtv_source"] is None
    assert row["segment_labels"] == ["Lung-Left", "Lung-Right"]


def test_rtstruct_roi_names_and_seg_labels_are_listed(raw_build):
    _, dataset = raw_build
    row = _rows_by_patient(dataset)["LUNG1-001"]
    assert row["rtstruct_roi_names"] == ["GTV-1", "Lung-Left"] and row["segment_labels"] == ["GTV-1", "Lung-Left"]
    assert row["gtv_source"] == "SEG"


def test_rtstruct_contours_are_filled_on_their_slice_with_holes_kept_empty(tmp_path):
    volume = CTVolume(array=np.zeros((5, 20, 30), np.int16), spacing=(2.0, 1.0, 1.0), origin=(-10.0, -5.0, 100.0))
    outer = np.array([[-6.0, -2.0, 104.0], [4.0, -2.0, 104.0], [4.0, 8.0, 104.0], [-6.0, 8.0, 104.0]])  # x 4..14, y 3..13, z 2
    hole = np.array([[-3.5, 0.5, 104.0], [1.5, 0.5, 104.0], [1.5, 5.5, 104.0], [-3.5, 5.5, 104.0]])  # x 7..11, y 6..10
    fake_tcia.write_rtstruct(tmp_path / "1-1.dcm", {"GTV-1": [outer, hole]}, patient_id="LUNG1-009", study_uid="1.2.3",
                             series_uid="1.2.3.4", frame_of_reference_uid="1.2.3.5", referenced_series_uid="1.2.3.6")  # fmt: skip
    mask, outside = rtstruct_roi_mask(tmp_path / "1-1.dcm", volume, "GTV-1")
    assert outside == 0 and mask[[0, 1, 3, 4]].sum() == 0
    assert mask[2, 5, 5] and mask[2, 12, 13] and not mask[2, 8, 9] and not mask[2, 2, 5] and not mask[2, 5, 16]
    assert rtstruct_roi_mask(tmp_path / "1-1.dcm", volume, "Heart") == (None, 0)


def test_rows_carry_no_patient_identifying_header_values(raw_build):
    _, dataset = raw_build
    for row in _rows_by_patient(dataset).values():
        text = " ".join(fake_tcia.strings_in({key: value for key, value in row.items() if key not in ("image", "gtv_mask")}))
        for value in fake_tcia.IDENTIFYING_VALUES.values():
            assert value not in text
        assert "09-18-2008" not in text


def test_missing_clinical_column_is_an_error_naming_it(tmp_path):
    header = [name for name in CLINICAL_COLUMNS if name != "deadstatus.event"]
    fake_tcia.write_csv(tmp_path / CLINICAL_NAME, header, [row[: len(header)] for row in CLINICAL_ROWS])
    with pytest.raises(DatasetLayoutError, match=r"lacks the column\(s\) \['deadstatus.event'\]"):
        read_lung1_clinical(tmp_path / CLINICAL_NAME)


def test_histology_outside_the_vocabulary_is_an_error_naming_the_patient(tmp_path):
    rows = [CLINICAL_ROWS[0][:6] + ["carcinoid"] + CLINICAL_ROWS[0][7:10]]
    fake_tcia.write_csv(tmp_path / CLINICAL_NAME, list(CLINICAL_COLUMNS), rows)
    with pytest.raises(DatasetValueError, match="'Histology' of .* LUNG1-001: 'carcinoid'"):
        read_lung1_clinical(tmp_path / CLINICAL_NAME)


def test_missing_clinical_table_is_an_error_saying_where_to_put_it(tmp_path, chests):
    fake = fake_tcia.FakeTciaDownload(tmp_path / "download", "NSCLC-Radiomics")
    chest = chests["LUNG1-001"]
    fake.add_ct(fake.add_study("LUNG1-001"), chest.hu[:3], chest.spacing, chest.origin)
    builder = NsclcRadiomics(data_dir=str(tmp_path / "download"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DatasetLayoutError, match="the Lung1 clinical CSV not found"):
        builder.download_and_prepare()


def test_corrupt_ct_volume_is_skipped_logged_and_counted(tmp_path, chests):
    fake = fake_tcia.FakeTciaDownload(tmp_path / "download", "NSCLC-Radiomics")
    for patient_id in ("LUNG1-001", "LUNG1-002"):
        chest = chests[patient_id]
        ct = fake.add_ct(fake.add_study(patient_id), chest.hu, chest.spacing, chest.origin)
    broken = sorted(ct["folder"].glob("*.dcm"))[5]
    broken.write_bytes(broken.read_bytes()[:400])
    fake.write_metadata()
    fake_tcia.write_csv(tmp_path / "download" / CLINICAL_NAME, CLINICAL_HEADER, CLINICAL_ROWS)
    builder = NsclcRadiomics(data_dir=str(tmp_path / "download"), cache_dir=str(tmp_path / "cache"), test_fraction=0.0)
    builder.download_and_prepare()
    assert builder.as_dataset()["train"]["patient_id"] == ["LUNG1-001"]
    assert builder.skips.total == 1 and "unreadable volume" in builder.skips.skipped[0][1]


def test_preprocessed_rows_hold_pixel_values_crop_box_and_labels(preprocessed_build, chests):
    _, dataset = preprocessed_build
    row = _rows_by_patient(dataset)["LUNG1-001"]
    pixels = np.asarray(row["pixel_values"], dtype=np.float32)
    assert pixels.shape == (16, 32, 32) and 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.std() > 0.01
    bbox = np.asarray(row["crop_bbox"])
    assert bbox.shape == (3, 2) and np.all(bbox[:, 0] < bbox[:, 1]) and np.all(bbox[:, 1] <= np.asarray(chests["LUNG1-001"].hu.shape))
    assert "image" not in row and "gtv_mask" not in row and row["gtv_volume_ml"] > 0
    assert dataset["train"].features["pixel_values"].dtype == "float16"


def test_clinical_text_option_describes_the_clinical_fields(preprocessed_build):
    _, dataset = preprocessed_build
    text = _rows_by_patient(dataset)["LUNG1-001"]["text"]
    assert text == "Sex: male. Age: 79. Histology: large cell. Clinical T stage: T2. Clinical N stage: N3. Clinical M stage: M0. Overall stage: IIIb."


def test_corrupt_seg_skips_its_ct_with_a_counted_reason_instead_of_a_wrong_gtv(tmp_path, chests):
    fake = fake_tcia.FakeTciaDownload(tmp_path / "download", "NSCLC-Radiomics")
    for patient_id in ("LUNG1-001", "LUNG1-002"):
        chest = chests[patient_id]
        study = fake.add_study(patient_id)
        fake.add_ct(study, chest.hu, chest.spacing, chest.origin)
        seg = fake.add_seg(study, {"GTV-1": chest.lesion_mask}, chest.spacing, chest.origin)
    seg_file = seg["folder"] / "1-1.dcm"
    seg_file.write_bytes(seg_file.read_bytes()[:-200])
    fake.write_metadata()
    fake_tcia.write_csv(tmp_path / "download" / CLINICAL_NAME, CLINICAL_HEADER, CLINICAL_ROWS)
    builder = NsclcRadiomics(data_dir=str(tmp_path / "download"), cache_dir=str(tmp_path / "cache"), test_fraction=0.0)
    builder.download_and_prepare()
    assert builder.as_dataset()["train"]["patient_id"] == ["LUNG1-001"]
    assert builder.skips.total == 1 and "unreadable annotation" in builder.skips.skipped[0][1]
