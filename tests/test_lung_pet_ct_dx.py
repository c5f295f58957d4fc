"""Tests of the Lung-PET-CT-Dx builder: patient letters, PASCAL VOC boxes by SOPInstanceUID, the xlsx, bad series."""

import numpy as np
import pytest

import fake_tcia
from datasets_scripts.common import DatasetLayoutError, SkipCounter
from datasets_scripts.lung_pet_ct_dx import LungPetCtDx, patient_id_from, read_clinical_workbook, read_voc_annotation


WORKBOOK_NAME = "statistics-clinical-20201221.xlsx"
WORKBOOK_ROWS = [
    [1, "A0001", "M", 58, 60.5, "1a", 0, "0", "2", 1],
    [2, "G0002", "F", 70, "NA", "4", 2.0, "1b", "3", 0],
]


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    """A0001: CT with boxes on two slices; G0002: CT + secondary capture with a box each; B0003: not in the xlsx."""
    root = tmp_path_factory.mktemp("lung_pet_ct_dx")
    fake = fake_tcia.FakeTciaDownload(root, "Lung-PET-CT-Dx")
    chests = {}
    for patient_id, seed in (("Lung_Dx-A0001", 31), ("Lung_Dx-G0002", 32), ("Lung_Dx-B0003", 33)):
        chest = chests[patient_id] = fake_tcia.phantom(seed)
        study = fake.add_study(patient_id, "ThoraxAThoraxRoutine Adult")
        ct = fake.add_ct(study, chest.hu, chest.spacing, chest.origin, series_number=2, description="ThoraxRoutine  8.0.0  B70f")
        annotations = root / "Annotation" / patient_id.removeprefix("Lung_Dx-")
        letter = patient_id[len("Lung_Dx-")]
        if patient_id == "Lung_Dx-A0001":
            fake_tcia.write_voc_xml(annotations / f"{ct['sop_instance_uids'][7]}.xml", [(letter, 10, 30, 20, 40), (letter, 50, 5, 60, 9)])
            fake_tcia.write_voc_xml(annotations / f"{ct['sop_instance_uids'][10]}.xml", [(letter, 1, 2, 3, 4)])
        if patient_id == "Lung_Dx-G0002":
            fake_tcia.write_voc_xml(annotations / f"{ct['sop_instance_uids'][3]}.xml", [(letter, 20, 20, 30, 30)])
            capture = fake.add_secondary_capture(study, np.zeros((16, 16), np.uint16))
            fake_tcia.write_voc_xml(annotations / f"{capture['sop_instance_uids'][0]}.xml", [(letter, 1, 1, 5, 5)])
    absent = fake_tcia.manifest_row(
        collection="Lung-PET-CT-Dx", series_uid=fake_tcia.new_uid(), subject_id="Lung_Dx-A0001", study_uid=fake_tcia.new_uid(),
        modality="CT", sop_class_uid=fake_tcia.CT_IMAGE_STORAGE, folder=ct["folder"], manifest_folder=fake.manifest_folder,
    )  # fmt: skip
    absent["File Location"] = "./Lung-PET-CT-Dx/Lung_Dx-A0001/04-25-2007-NA-gone-00000/3.000000-NA-00000"
    fake.write_metadata(extra_rows=[absent])
    header = list(fake_tcia.LUNG_PET_CT_DX_CLINICAL_HEADER)
    assert header[7] == "\uff2d-Stage"
    fake_tcia.write_xlsx(root / WORKBOOK_NAME, header, WORKBOOK_ROWS)
    return root, chests


@pytest.fixture(scope="module")
def build(download, tmp_path_factory):
    root, _ = download
    builder = LungPetCtDx(data_dir=str(root), cache_dir=str(tmp_path_factory.mktemp("cache")), validation_fraction=0.0, test_fraction=0.0)
    builder.download_and_prepare()
    return builder, builder.as_dataset()["train"]


def _row(train, patient_id):
    return next(row for row in train if row["patient_id"] == patient_id)


def test_one_row_per_ct_series_with_geometry(build):
    _, train = build
    assert sorted(train["patient_id"]) == ["Lung_Dx-A0001", "Lung_Dx-B0003", "Lung_Dx-G0002"]


def test_histology_comes_from_the_patient_letter(build):
    _, train = build
    names = {row["patient_id"]: train.features["histology"].int2str(row["histology"]) for row in train}
    assert names == {"Lung_Dx-A0001": "adenocarcinoma", "Lung_Dx-G0002": "squamous cell carcinoma", "Lung_Dx-B0003": "small cell carcinoma"}


def test_workbook_values_with_full_width_m_stage_header_are_read(build):
    _, train = build
    row = _row(train, "Lung_Dx-A0001")
    stages = [train.features[name].int2str(row[name]) for name in ("t_stage", "n_stage", "m_stage")]
    assert stages == ["T1a", "N0", "M0"] and train.features["sex"].int2str(row["sex"]) == "M"
    assert row["age"] == 58 and row["weight_kg"] == pytest.approx(60.5) and row["smoking_history"] == "1"
    other = _row(train, "Lung_Dx-G0002")
    assert [train.features[name].int2str(other[name]) for name in ("t_stage", "n_stage", "m_stage")] == ["T4", "N2", "M1b"]
    assert other["weight_kg"] is None


def test_patient_missing_from_the_workbook_keeps_only_its_histology(build):
    _, train = build
    row = _row(train, "Lung_Dx-B0003")
    assert row["sex"] is None and row["t_stage"] is None and row["histology"] is not None


def test_boxes_are_linked_by_sop_instance_uid_and_placed_in_the_canonical_array(build):
    _, train = build
    boxes = _row(train, "Lung_Dx-A0001")["boxes"]
    assert len(boxes) == 3
    by_slice = sorted((box["bbox"][0][0], box["bbox"][1], box["bbox"][2], box["pixel_box"]) for box in boxes)
    assert by_slice[0] == (7, [5, 9], [50, 60], [50.0, 5.0, 60.0, 9.0])
    assert by_slice[1] == (7, [30, 40], [10, 20], [10.0, 30.0, 20.0, 40.0])
    assert by_slice[2][0] == 10
    assert {train.features["boxes"].feature["label"].int2str(box["label"]) for box in boxes} == {"A"}
    assert _row(train, "Lung_Dx-B0003")["boxes"] == []


def test_secondary_capture_series_is_skipped_and_its_annotation_reported_unmatched(build):
    builder, train = build
    reasons = [reason for _, reason in builder.skips.skipped]
    assert sum("secondary-capture" in reason for reason in reasons) == 1
    assert len(builder.unmatched_annotations) == 1 and "G0002" in builder.unmatched_annotations[0]
    assert len(_row(train, "Lung_Dx-G0002")["boxes"]) == 1


def test_series_listed_in_metadata_but_absent_is_skipped_and_counted(build):
    builder, _ = build
    assert sum("is missing" in reason for _, reason in builder.skips.skipped) == 1


def test_voc_annotation_reads_difficult_with_capital_d_and_unknow_fields(tmp_path):
    path = fake_tcia.write_voc_xml(tmp_path / "1.2.3.xml", [("E", 1, 2, 3, 4)])
    path.write_text(path.read_text().replace("<Difficult>0</Difficult>", "<Difficult>1</Difficult>"))
    assert "<filename>Unknow</filename>" in path.read_text()
    assert read_voc_annotation(path) == [{"letter": "E", "difficult": True, "pixel_box": [1.0, 2.0, 3.0, 4.0]}]


def test_patient_ids_with_or_without_the_lung_dx_prefix_are_the_same_patient():
    assert patient_id_from("A0001") == patient_id_from("Lung_Dx-A0001") == patient_id_from(" a0001 ") == "Lung_Dx-A0001"


def test_workbook_without_a_required_column_is_an_error_naming_it(tmp_path):
    header = [name for name in fake_tcia.LUNG_PET_CT_DX_CLINICAL_HEADER if name != "Sex"]
    fake_tcia.write_xlsx(tmp_path / WORKBOOK_NAME, header, [row[:2] + row[3:] for row in WORKBOOK_ROWS])
    with pytest.raises(DatasetLayoutError, match=r"lacks the column\(s\) \['Sex'\]"):
        read_clinical_workbook(tmp_path / WORKBOOK_NAME, SkipCounter("values"))


def test_unrecognised_stage_value_is_left_empty_and_counted(tmp_path):
    rows = [WORKBOOK_ROWS[0][:5] + ["X"] + WORKBOOK_ROWS[0][6:]]
    fake_tcia.write_xlsx(tmp_path / WORKBOOK_NAME, fake_tcia.LUNG_PET_CT_DX_CLINICAL_HEADER, rows)
    counter = SkipCounter("values")
    assert read_clinical_workbook(tmp_path / WORKBOOK_NAME, counter)["Lung_Dx-A0001"]["t_stage"] is None
    assert counter.total == 1


def test_patient_whose_only_series_is_a_secondary_capture_enters_no_split(tmp_path):
    fake = fake_tcia.FakeTciaDownload(tmp_path / "download", "Lung-PET-CT-Dx")
    chest = fake_tcia.phantom(34)
    fake.add_ct(fake.add_study("Lung_Dx-A0001"), chest.hu[:6], chest.spacing, chest.origin)
    fake.add_secondary_capture(fake.add_study("Lung_Dx-E0002"), np.zeros((16, 16), np.uint16))
    fake.write_metadata()
    fake_tcia.write_xlsx(tmp_path / "download" / WORKBOOK_NAME, fake_tcia.LUNG_PET_CT_DX_CLINICAL_HEADER, WORKBOOK_ROWS)
    builder = LungPetCtDx(data_dir=str(tmp_path / "download"), cache_dir=str(tmp_path / "cache"), validation_fraction=0.0, test_fraction=0.5)
    builder.download_and_prepare()
    assert set(builder.patient_splits) == {"Lung_Dx-A0001"}
    assert builder.as_dataset()["train"]["patient_id"] == ["Lung_Dx-A0001"]
    assert any("Lung_Dx-E0002" in key and "secondary-capture" in reason for key, reason in builder.skips.skipped)


def test_raw_build_exports_to_parquet_and_loads_back_with_volume_and_boxes(build, download, tmp_path):
    from datasets_scripts.export import export_to_parquet, load_exported

    _, train = build
    export_to_parquet({"train": train}, tmp_path / "export", config_name="raw")
    loaded = load_exported(tmp_path / "export", config_name="raw")["train"]
    assert loaded.features == train.features
    row = _row(loaded, "Lung_Dx-A0001")
    np.testing.assert_array_equal(fake_tcia.nifti_array_lps(row["image"]), download[1]["Lung_Dx-A0001"].hu)
    assert row["boxes"] == _row(train, "Lung_Dx-A0001")["boxes"]
