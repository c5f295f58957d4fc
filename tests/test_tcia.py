"""Tests of the NBIA Data Retriever helpers: folder naming, metadata.csv, series discovery, geometry, boxes."""

import numpy as np
import pytest

import fake_tcia
from datasets_scripts.common import DatasetLayoutError, DatasetValueError, DuplicateDetector, SkipCounter
from datasets_scripts.tcia import (
    class_label_value,
    dicom_box_to_volume_box,
    discover_series,
    find_collection_folder,
    list_collection_series,
    parse_series_folder_name,
    parse_study_folder_name,
    read_manifest_metadata,
    read_series_volume,
    resolve_file_location,
    series_geometry_problem,
)
from modeling_lucafound.ct_io import CTVolume


@pytest.fixture(scope="module")
def chest():
    return fake_tcia.phantom(5)


@pytest.fixture(scope="module")
def download(tmp_path_factory, chest):
    """One patient: a CT (descriptive folders, retriever >= 3.6 names), a SEG, an RTSTRUCT, a secondary capture."""
    root = tmp_path_factory.mktemp("tcia")
    fake = fake_tcia.FakeTciaDownload(root, "NSCLC-Radiomics")
    study = fake.add_study("LUNG1-001")
    ct = fake.add_ct(study, chest.hu, chest.spacing, chest.origin)
    fake.add_seg(study, {"GTV-1": chest.lesion_mask}, chest.spacing, chest.origin)
    fake.add_rtstruct(study, {"GTV-1": [np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [5.0, 5.0, 0.0]])]}, ct["series_uid"])
    fake.add_secondary_capture(study, np.zeros((16, 16), np.uint16))
    fake.write_metadata(windows_paths=True)
    return root, fake, ct


def test_descriptive_series_folder_name_gives_number_description_and_uid_tail():
    parsed = parse_series_folder_name("2.000000-ThoraxRoutine  8.0.0  B70f-62919")
    assert parsed == {"naming": "descriptive", "series_number": 2.0, "series_description": "ThoraxRoutine  8.0.0  B70f", "uid_suffix": "62919"}


def test_descriptive_series_folder_name_na_description_is_empty():
    assert parse_series_folder_name("0.000000-NA-82046")["series_description"] == ""
    assert parse_series_folder_name("300.000000-Segmentation-1.234")["uid_suffix"] == "1.234"


def test_classic_folder_names_are_uids():
    uid = "1.3.6.1.4.1.32722.99.99.298991776521342375010861296712563382046"
    assert parse_series_folder_name(uid) == {"naming": "classic", "series_uid": uid}
    assert parse_study_folder_name(uid) == {"naming": "classic", "study_uid": uid}


def test_descriptive_study_folder_name_keeps_only_the_uid_tail():
    assert parse_study_folder_name("04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834") == {"naming": "descriptive", "uid_suffix": "34834"}
    assert parse_study_folder_name("09-18-2008-StudyID-NA-69331")["uid_suffix"] == "69331"


def test_windows_and_posix_file_locations_resolve_to_the_same_folder(tmp_path):
    windows = resolve_file_location(tmp_path, ".\\NSCLC-Radiomics\\LUNG1-001\\09-18-2008-StudyID-NA-69331\\0.000000-NA-82046")
    posix = resolve_file_location(tmp_path, "./NSCLC-Radiomics/LUNG1-001/09-18-2008-StudyID-NA-69331/0.000000-NA-82046")
    assert windows == posix == tmp_path / "NSCLC-Radiomics" / "LUNG1-001" / "09-18-2008-StudyID-NA-69331" / "0.000000-NA-82046"


def test_collection_folder_is_found_from_download_manifest_or_collection_folder(download):
    root, fake, _ = download
    for start in (root, fake.manifest_folder, fake.collection_folder):
        assert find_collection_folder(start, "NSCLC-Radiomics") == fake.collection_folder


def test_missing_collection_folder_error_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no 'NSCLC-Radiomics' folder found"):
        find_collection_folder(tmp_path, "NSCLC-Radiomics")


def test_manifest_metadata_lists_every_series_with_modality_and_sop_class(download):
    root, fake, ct = download
    series = read_manifest_metadata(fake.manifest_folder / "metadata.csv", collection="NSCLC-Radiomics")
    assert sorted(item.modality for item in series) == ["CT", "CT", "RTSTRUCT", "SEG"]
    listed_ct = next(item for item in series if item.series_uid == ct["series_uid"])
    assert listed_ct.folder == ct["folder"] and listed_ct.subject_id == "LUNG1-001" and listed_ct.number_of_images == 24


def test_manifest_series_whose_folder_is_absent_is_skipped_and_counted(download):
    _, fake, _ = download
    rows = fake.manifest_rows()
    broken = [dict(rows[0], **{"File Location": "./NSCLC-Radiomics/LUNG1-001/gone/0.000000-NA-00000"})] + rows[1:]
    fake_tcia.write_manifest_metadata(fake.manifest_folder, broken)
    try:
        skips = SkipCounter("test")
        series = read_manifest_metadata(fake.manifest_folder / "metadata.csv", skips=skips)
        assert len(series) == 3 and skips.total == 1
        assert "missing" in skips.skipped[0][1]
    finally:
        fake_tcia.write_manifest_metadata(fake.manifest_folder, rows)


def test_manifest_without_a_required_column_names_file_and_column(download, tmp_path):
    _, fake, _ = download
    rows = [{key: value for key, value in row.items() if key != "File Location"} for row in fake.manifest_rows()]
    header = [name for name in fake_tcia.MANIFEST_HEADER if name != "File Location"]
    fake_tcia.write_csv(tmp_path / "metadata.csv", header, [[row[name] for name in header] for row in rows])
    with pytest.raises(DatasetLayoutError, match=r"metadata\.csv lacks the column\(s\) \['File Location'\]"):
        read_manifest_metadata(tmp_path / "metadata.csv")


def test_series_are_discovered_by_modality_tag_without_metadata_csv(tmp_path, chest):
    fake = fake_tcia.FakeTciaDownload(tmp_path, "NSCLC Radiogenomics", naming="classic", file_naming="old")
    study = fake.add_study("R01-001")
    ct = fake.add_ct(study, chest.hu[:4], chest.spacing, chest.origin)
    fake.add_seg(study, {"Neoplasm": chest.lesion_mask[:4]}, chest.spacing, chest.origin)
    series = discover_series(fake.collection_folder)
    assert {item.modality for item in series} == {"CT", "SEG"}
    found = next(item for item in series if item.modality == "CT")
    assert found.series_uid == ct["series_uid"] and found.subject_id == "R01-001" and found.number_of_images == 4
    assert sorted(path.name for path in ct["folder"].iterdir())[0] == "000001.dcm"


def test_repeated_series_uid_is_kept_once_and_counted(download, tmp_path):
    _, fake, _ = download
    rows = fake.manifest_rows()
    fake_tcia.write_manifest_metadata(fake.manifest_folder, rows + [rows[0]])
    try:
        skips, duplicates = SkipCounter("test"), DuplicateDetector("test")
        _, series = list_collection_series(fake.manifest_folder, "NSCLC-Radiomics", skips=skips, duplicates=duplicates)
        assert len(series) == 4 and skips.total == 1 and "duplicate series UID" in skips.skipped[0][1]
        assert duplicates.duplicates == [(str(series[0].folder), str(series[0].folder))]
    finally:
        fake_tcia.write_manifest_metadata(fake.manifest_folder, rows)


def test_secondary_capture_series_has_no_geometry_and_ct_series_has(download):
    _, fake, ct = download
    capture = next(item for item in fake.series if item["sop_class_uid"] == fake_tcia.SECONDARY_CAPTURE_STORAGE)
    assert "secondary-capture" in series_geometry_problem(capture["folder"])
    assert series_geometry_problem(ct["folder"]) is None


def test_series_volume_is_ordered_by_position_not_file_name_and_in_hounsfield_units(download, chest):
    _, _, ct = download
    volume = read_series_volume(ct["folder"])
    np.testing.assert_array_equal(volume.array, chest.hu)
    np.testing.assert_allclose(volume.spacing, chest.spacing, rtol=1e-5)
    np.testing.assert_allclose(volume.origin, chest.origin, atol=1e-3)


def test_pixel_box_on_a_slice_maps_to_the_canonical_array(download, chest):
    _, _, ct = download
    volume = read_series_volume(ct["folder"])
    header = fake_tcia.read_header_of(ct["folder"], ct["sop_instance_uids"][7])
    assert dicom_box_to_volume_box(header, (10, 20, 30, 40), volume) == [[7, 7], [20, 40], [10, 30]]


def test_pixel_box_on_a_slice_stored_mirrored_lands_mirrored_in_lps(chest):
    from pydicom.dataset import Dataset

    volume = CTVolume(array=np.zeros((4, 50, 60), np.int16), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    header = Dataset()
    header.ImagePositionPatient = [59.0, 49.0, 4.0]  # the slice's first pixel is the array's last column and row
    header.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    header.PixelSpacing = [1.0, 1.0]
    assert dicom_box_to_volume_box(header, (0, 0, 9, 4), volume) == [[2, 2], [45, 49], [50, 59]]


def test_value_outside_vocabulary_raises_naming_row_and_column():
    with pytest.raises(DatasetValueError, match="column 'Histology' of LUNG1-009: 'sarcoma'"):
        class_label_value("sarcoma", ["adenocarcinoma", "nos"], "Histology", "LUNG1-009")


def test_tolerated_value_outside_vocabulary_is_left_empty_and_counted():
    counter = SkipCounter("values")
    assert class_label_value("Indeterminate", ["Wildtype", "Translocated"], "ALK", "R01-003", counter) is None
    assert counter.total == 1


def test_vocabulary_match_ignores_case_spaces_and_full_width_letters():
    assert class_label_value("  ＩＩＩa ", ["I", "II", "IIIa", "IIIb"], "Overall.Stage", "row") == "IIIa"
    assert class_label_value("Not collected", ["Mutant"], "EGFR", "row") is None
    assert class_label_value("Unknown", ["Mutant"], "EGFR", "row") is None


def test_builders_of_the_tcia_and_luna16_collections_are_exported_by_name():
    import datasets_scripts
    from datasets_scripts.lung_pet_ct_dx import LungPetCtDx
    from datasets_scripts.luna16 import Luna16
    from datasets_scripts.nsclc_radiogenomics import NsclcRadiogenomics
    from datasets_scripts.nsclc_radiomics import NsclcRadiomics

    assert datasets_scripts.get_builder_class("luna16") is Luna16
    assert datasets_scripts.NsclcRadiomics is NsclcRadiomics
    assert datasets_scripts.get_builder_class("nsclc-radiogenomics") is NsclcRadiogenomics
    assert datasets_scripts.LungPetCtDx is LungPetCtDx


def test_ct_series_without_image_position_has_no_geometry(tmp_path, chest):
    import pydicom

    fake = fake_tcia.FakeTciaDownload(tmp_path, "NSCLC-Radiomics")
    ct = fake.add_ct(fake.add_study("LUNG1-001"), chest.hu[:3], chest.spacing, chest.origin)
    for path in sorted(ct["folder"].glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        del dataset.ImagePositionPatient
        dataset.save_as(path, enforce_file_format=True)
    assert "no ImagePositionPatient" in series_geometry_problem(ct["folder"])
