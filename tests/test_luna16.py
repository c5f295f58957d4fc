"""Tests of the LUNA16 builder on a fake archive: MHD/RAW subsets, world-mm nodules, flipped scans, bad scans."""

import numpy as np
import pytest

import fake_tcia
from datasets_scripts.common import DatasetLayoutError
from datasets_scripts.luna16 import Luna16


UIDS = [f"{fake_tcia.LUNA16_SERIESUID_PREFIX}{105756658031515062000744821260 + index}" for index in range(5)]
BLOB = (slice(10, 13), slice(20, 23), slice(40, 43))  # a 3-voxel cube centred on voxel (11, 21, 41)


def _blob_world(chest):
    return np.asarray(chest.origin) + np.array([41, 21, 11]) * np.asarray(chest.spacing)[::-1]


@pytest.fixture(scope="module")
def chests():
    result = []
    for seed in (41, 42):
        chest = fake_tcia.phantom(seed)
        chest.hu[BLOB] = 400
        result.append(chest)
    return result


@pytest.fixture(scope="module")
def archive(tmp_path_factory, chests):
    """UIDS[0] plain (+ lung mask), UIDS[1] stored with x/y flipped, UIDS[2] same voxels as UIDS[0],
    UIDS[3] a truncated .raw, UIDS[0] again in subset3; UIDS[4] only in annotations.csv (partial download)."""
    root = tmp_path_factory.mktemp("luna16")
    first, second = chests
    fake_tcia.write_mhd(root / "subset0" / f"{UIDS[0]}.mhd", first.hu, first.spacing, offset=first.origin)
    far_corner = (second.origin[0] + 63 * second.spacing[2], second.origin[1] + 63 * second.spacing[1], second.origin[2])
    fake_tcia.write_mhd(root / "subset1" / f"{UIDS[1]}.mhd", second.hu, second.spacing, offset=far_corner, flipped_xy=True)
    fake_tcia.write_mhd(root / "subset1" / f"{UIDS[2]}.mhd", first.hu, first.spacing, offset=first.origin)
    broken = fake_tcia.write_mhd(root / "subset2" / f"{UIDS[3]}.mhd", first.hu + 1, first.spacing, offset=first.origin)
    raw = broken.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    fake_tcia.write_mhd(root / "subset3" / f"{UIDS[0]}.mhd", first.hu, first.spacing, offset=first.origin)
    lungs = np.where(first.hu < -600, np.where(np.arange(64)[None, None, :] < 32, 3, 4), 0).astype(np.int16)
    fake_tcia.write_mhd(root / "seg-lungs-LUNA16" / f"{UIDS[0]}.mhd", lungs, first.spacing, offset=first.origin, compress=True)
    header = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    rows = [[UIDS[0], *(f"{value:.6f}" for value in _blob_world(first)), "5.42"]]
    rows += [[UIDS[1], *(f"{value:.6f}" for value in _blob_world(second)), "7.1"]]
    rows += [[UIDS[4], "-100.5", "20.25", "-150.0", "4.0"]]
    fake_tcia.write_csv(root / "annotations.csv", header, rows)
    evaluation = root / "evaluationScript" / "annotations"
    fake_tcia.write_csv(evaluation / "annotations.csv", header, rows)
    fake_tcia.write_csv(evaluation / "annotations_excluded.csv", header, [[UIDS[0], *rows[0][1:4], "-1"]])
    fake_tcia.write_csv(evaluation / "seriesuids.csv", None, [[uid] for uid in UIDS])
    candidates = [[UIDS[0], *rows[0][1:4], "1"], [UIDS[0], "0.0", "0.0", f"{first.origin[2]:.3f}", "0"]]
    fake_tcia.write_csv(root / "candidates_V2.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], candidates)
    return root


@pytest.fixture(scope="module")
def build(archive, tmp_path_factory):
    builder = Luna16(data_dir=str(archive), cache_dir=str(tmp_path_factory.mktemp("cache")), include_candidates=True,
                     validation_fraction=0.0, test_fraction=0.0)  # fmt: skip
    builder.download_and_prepare()
    return builder, builder.as_dataset()["train"]


def _row(train, seriesuid):
    return next(row for row in train if row["seriesuid"] == seriesuid)


def test_readable_unique_scans_become_rows_with_their_subset(build):
    _, train = build
    assert sorted((row["seriesuid"], row["subset"]) for row in train) == [(UIDS[0], 0), (UIDS[1], 1)]


def test_nodule_world_coordinates_point_at_the_nodule_voxels(build, chests):
    _, train = build
    row = _row(train, UIDS[0])
    (nodule,) = row["nodules"]
    assert nodule["center_voxel"] == pytest.approx([11, 21, 41], abs=1e-3) and nodule["diameter_mm"] == pytest.approx(5.42)
    image = fake_tcia.nifti_array_lps(row["image"])
    assert image[11, 21, 41] == 400 and row["nodule_count"] == 1


def test_scan_with_flipped_transform_matrix_is_mirrored_into_lps_and_its_nodule_follows(build, chests):
    _, train = build
    row = _row(train, UIDS[1])
    np.testing.assert_array_equal(fake_tcia.nifti_array_lps(row["image"]), chests[1].hu)
    assert row["nodules"][0]["center_voxel"] == pytest.approx([11, 21, 41], abs=1e-3)
    np.testing.assert_allclose(row["origin"], chests[1].origin, atol=1e-3)
    assert row["direction"] == [1, 0, 0, 0, 1, 0, 0, 0, 1]


def test_scan_with_identical_voxels_is_skipped_and_reported_as_duplicate(build):
    builder, _ = build
    assert (UIDS[2], UIDS[0]) in builder.duplicates.duplicates
    assert any(key == UIDS[2] and "identical voxels" in reason for key, reason in builder.skips.skipped)


def test_series_uid_present_in_two_subsets_is_read_once_and_reported(build):
    builder, _ = build
    assert any("subset3" in key and "duplicate series UID" in reason for key, reason in builder.skips.skipped)


def test_truncated_raw_file_is_skipped_logged_and_counted(build):
    builder, _ = build
    assert any(key == UIDS[3] and "unreadable volume" in reason for key, reason in builder.skips.skipped)
    assert builder.skips.total == 3


def test_excluded_finding_with_negative_diameter_has_unknown_diameter(build):
    _, train = build
    (finding,) = _row(train, UIDS[0])["excluded_findings"]
    assert finding["diameter_mm"] is None and finding["center_voxel"] == pytest.approx([11, 21, 41], abs=1e-3)


def test_lung_mask_from_seg_lungs_keeps_labels_3_and_4(build):
    _, train = build
    row = _row(train, UIDS[0])
    mask = fake_tcia.nifti_array_lps(row["lung_mask"])
    assert set(np.unique(mask)) == {0, 3, 4} and mask.shape == tuple(row["shape"])
    assert _row(train, UIDS[1])["lung_mask"] is None


def test_candidates_carry_their_class_as_a_label(build):
    _, train = build
    candidates = _row(train, UIDS[0])["candidates"]
    names = train.features["candidates"].feature["label"].names
    assert [names[item["label"]] for item in candidates] == ["nodule", "not nodule"]


def test_patient_id_table_keeps_scans_of_one_patient_in_one_split(archive, tmp_path):
    table = fake_tcia.write_csv(tmp_path / "patients.csv", ["seriesuid", "patient_id"], [[uid, "LIDC-IDRI-0001"] for uid in UIDS[:4]])
    builder = Luna16(data_dir=str(archive), cache_dir=str(tmp_path / "cache"), patient_id_table=str(table))
    builder.download_and_prepare()
    assert set(builder.patient_splits) == {"LIDC-IDRI-0001"}
    dataset = builder.as_dataset()
    assert [set(split["patient_id"]) for split in dataset.values()] == [{"LIDC-IDRI-0001"}]


def test_official_subsets_can_be_used_as_folds(archive, tmp_path):
    builder = Luna16(data_dir=str(archive), cache_dir=str(tmp_path / "cache"), test_subsets=(1,))
    builder.download_and_prepare()
    dataset = builder.as_dataset()
    assert dataset["test"]["seriesuid"] == [UIDS[1]] and dataset["train"]["seriesuid"] == [UIDS[0]]


def test_annotations_without_diameter_column_is_an_error_naming_it(archive, tmp_path):
    (tmp_path / "subset0").symlink_to(archive / "subset0")
    fake_tcia.write_csv(tmp_path / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ"], [[UIDS[0], "0", "0", "0"]])
    with pytest.raises(DatasetLayoutError, match=r"lacks the column\(s\) \['diameter_mm'\]"):
        Luna16(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache")).download_and_prepare()


def test_folder_without_subsets_is_an_error_saying_what_to_point_at(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no subset0/ ... subset9/ folders"):
        Luna16(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache")).download_and_prepare()


def test_preprocessed_config_keeps_nodules_next_to_pixel_values(archive, tmp_path):
    builder = Luna16(data_dir=str(archive), config_name="preprocessed", image_size=(16, 32, 32),
                     cache_dir=str(tmp_path / "cache"), validation_fraction=0.0, test_fraction=0.0)  # fmt: skip
    builder.download_and_prepare()
    row = _row(builder.as_dataset()["train"], UIDS[1])
    assert np.asarray(row["pixel_values"]).shape == (16, 32, 32) and len(row["nodules"]) == 1
    bbox = np.asarray(row["crop_bbox"])
    assert np.all(bbox[:, 0] <= np.array([11, 21, 41])) and np.all(np.array([11, 21, 41]) < bbox[:, 1])
