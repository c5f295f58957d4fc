"""Tests for `lucafound preprocess`: NIfTI crop and mask with geometry, atomic outputs, bad inputs reported and
skipped with a non-zero exit, a summary table, and no patient-identifying DICOM field in anything written."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from ct_phantoms import CHEST_SPACING, chest_phantom, head_phantom, write_dicom_series
from modeling_lucafound.cli import main
from modeling_lucafound.commands.preprocess import output_id

# long enough (>= 6 bytes) not to occur by chance in megabytes of float voxels
IDENTIFYING_VALUES = (b"DOE^JANE", b"PAT-0001", b"19500101", b"20200102", b"General Hospital", b"ACC123", b"HOUSE^GREGORY")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A DICOM series folder, a NIfTI phantom, a head CT and a missing path, preprocessed in one run."""
    root = tmp_path_factory.mktemp("preprocess")
    hu, _ = chest_phantom()
    write_dicom_series(root / "inputs" / "case_dicom", hu, CHEST_SPACING)
    nifti = sitk.GetImageFromArray(hu)
    nifti.SetSpacing(CHEST_SPACING[::-1])
    nifti.SetOrigin((-160.0, -160.0, -200.0))
    sitk.WriteImage(nifti, str(root / "inputs" / "case_nifti.nii.gz"))
    head = sitk.GetImageFromArray(head_phantom())
    head.SetSpacing((2.5, 2.5, 4.0))
    sitk.WriteImage(head, str(root / "inputs" / "head.nrrd"))
    inputs = [root / "inputs" / "case_dicom", root / "inputs" / "case_nifti.nii.gz", root / "inputs" / "head.nrrd", root / "missing.nii.gz"]
    output_dir = root / "out"
    return {"inputs": inputs, "output_dir": output_dir, "hu": hu}


@pytest.fixture(scope="module")
def run_result(batch):
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["preprocess", *map(str, batch["inputs"]), "--output-dir", str(batch["output_dir"])])
    return code, stdout.getvalue(), stderr.getvalue()


def test_exit_code_is_non_zero_when_any_input_failed(run_result):
    assert run_result[0] == 1


def test_good_inputs_are_written_even_though_others_failed(batch, run_result):
    names = sorted(path.name for path in batch["output_dir"].iterdir())
    assert names == [
        "case_dicom_crop.nii.gz",
        "case_dicom_lung_mask.nii.gz",
        "case_nifti_crop.nii.gz",
        "case_nifti_lung_mask.nii.gz",
        "preprocess_summary.json",
    ]  # and no temporary file is left behind


def test_summary_table_lists_each_input_with_its_box_or_reason(run_result):
    _, stdout, stderr = run_result
    lines = stdout.splitlines()
    assert any(line.split()[:2] == ["case_dicom", "ok"] for line in lines if line.strip())
    assert any(line.split()[:2] == ["head", "failed"] for line in lines if line.strip())
    assert "No lungs found" in stdout and "does not exist" in stdout
    assert "2 of 4 scans preprocessed" in stdout and "2 failed" in stdout
    assert "preprocess" in stderr and "skipped" in stderr  # progress bar and skip notices go to stderr


def test_crop_is_the_model_input_with_the_geometry_of_the_crop_box(batch, run_result):
    crop = sitk.ReadImage(str(batch["output_dir"] / "case_nifti_crop.nii.gz"))
    assert crop.GetSize() == (256, 256, 48)
    values = sitk.GetArrayFromImage(crop)
    assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
    summary = json.loads((batch["output_dir"] / "preprocess_summary.json").read_text())
    row = next(r for r in summary["scans"] if r["id"] == "case_nifti")
    (z0, z1), (y0, y1), (x0, x1) = row["bbox"]
    # physical extent of the resized grid equals that of the crop box (voxel edges)
    spacing, origin = np.asarray(crop.GetSpacing()), np.asarray(crop.GetOrigin())
    first_edge = origin - spacing / 2
    expected_edge = np.asarray([-160.0, -160.0, -200.0]) + (np.asarray([x0, y0, z0]) - 0.5) * np.asarray(CHEST_SPACING[::-1])
    np.testing.assert_allclose(first_edge, expected_edge, atol=1e-3)
    np.testing.assert_allclose(spacing * np.asarray(crop.GetSize()), np.asarray([x1 - x0, y1 - y0, z1 - z0]) * CHEST_SPACING[::-1], rtol=1e-5)


def test_mask_is_binary_on_the_same_grid_as_the_crop(batch, run_result):
    crop = sitk.ReadImage(str(batch["output_dir"] / "case_dicom_crop.nii.gz"))
    mask = sitk.ReadImage(str(batch["output_dir"] / "case_dicom_lung_mask.nii.gz"))
    assert mask.GetSize() == crop.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), crop.GetOrigin())
    values = sitk.GetArrayFromImage(mask)
    assert set(np.unique(values)) == {0, 1} and 0.2 < values.mean() < 0.9


def test_dicom_and_nifti_of_the_same_scan_give_the_same_crop(batch, run_result):
    from_dicom = sitk.GetArrayFromImage(sitk.ReadImage(str(batch["output_dir"] / "case_dicom_crop.nii.gz")))
    from_nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(batch["output_dir"] / "case_nifti_crop.nii.gz")))
    np.testing.assert_array_equal(from_dicom, from_nifti)


def test_no_patient_identifying_dicom_field_is_written_anywhere(batch, run_result):
    import gzip

    for path in batch["output_dir"].iterdir():
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        for value in IDENTIFYING_VALUES:
            assert value not in data, f"{value!r} leaked into {path.name}"


def test_native_resolution_writes_the_hounsfield_crop_on_the_scans_grid(batch, tmp_path):
    code = main(["preprocess", str(batch["inputs"][1]), "--output-dir", str(tmp_path), "--native-resolution"])
    assert code == 0
    crop = sitk.ReadImage(str(tmp_path / "case_nifti_crop.nii.gz"))
    assert crop.GetSpacing() == pytest.approx(CHEST_SPACING[::-1])
    array = sitk.GetArrayFromImage(crop)
    assert array.dtype == np.int16
    index = crop.TransformPhysicalPointToIndex(crop.GetOrigin())
    assert index == (0, 0, 0)
    # the crop's corner voxel is the same voxel of the original scan
    summary = json.loads((tmp_path / "preprocess_summary.json").read_text())
    (z0, _), (y0, _), (x0, _) = summary["scans"][0]["bbox"]
    assert array[0, 0, 0] == batch["hu"][z0, y0, x0]


def test_output_id_comes_from_the_file_or_folder_name():
    assert output_id("/data/LUNG1-001/ct series") == "ct_series"
    assert output_id("scans/subject.nii.gz") == "subject"
    assert output_id("scans/1.3.6.1.4.mhd") == "1.3.6.1.4"
