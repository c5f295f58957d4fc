"""Tests for `modeling_lucafound.ct_io`: every supported CT source reads into the same canonical int16 LPS volume,
and every bad input raises a specific `LuCaFoundInputError` subclass that says what to do."""

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ct_phantoms import CHEST_SPACING, chest_phantom, write_dicom_series
from modeling_lucafound.ct_io import CTVolume, read_ct, read_label
from modeling_lucafound.errors import (
    CTFileNotFoundError,
    EmptySeriesFolderError,
    InvalidSpacingError,
    IrregularSliceSpacingError,
    LuCaFoundInputError,
    MultipleSeriesError,
    NonFiniteValuesError,
    NotAVolumeError,
    NotCTError,
    UnreadableCTError,
    VolumeTooLargeError,
)


@pytest.fixture(scope="module")
def phantom():
    hu, _ = chest_phantom(shape=(24, 64, 64), spacing=(10.0, 5.0, 5.0))
    return hu


def write_ras_nifti(volume, path):
    """Write a canonical (z, y, x) LPS volume as a NIfTI stored RAS: x and y flipped, affine set accordingly."""
    array_xyz = np.transpose(volume.array, (2, 1, 0))[::-1, ::-1, :]
    spacing_xyz = np.asarray(volume.spacing[::-1])
    nx, ny, _ = array_xyz.shape
    last_x = volume.origin[0] + (nx - 1) * spacing_xyz[0]  # LPS x of the voxel that becomes RAS index 0
    last_y = volume.origin[1] + (ny - 1) * spacing_xyz[1]
    # RAS world = (-x_lps, -y_lps, z_lps): RAS index 0 along x and y is the last LPS voxel
    affine = np.diag([spacing_xyz[0], spacing_xyz[1], spacing_xyz[2], 1.0])
    affine[:3, 3] = [-last_x, -last_y, volume.origin[2]]
    image = nibabel.Nifti1Image(np.ascontiguousarray(array_xyz), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nibabel.save(image, str(path))


def test_nrrd_reads_as_int16_hounsfield_with_axes_z_y_x_and_lps_geometry(test_data_dir):
    volume = read_ct(test_data_dir / "lung1_image.nrrd")
    assert volume.array.dtype == np.int16
    assert volume.array.shape == (48, 512, 512)
    assert volume.spacing == pytest.approx((5.0, 0.5703125, 0.5703125))
    assert volume.origin == pytest.approx((-146.0, -325.0, -777.5))
    assert np.allclose(volume.direction, np.eye(3))
    assert volume.metadata["modality"] == "CT"


def test_nifti_stored_ras_reads_to_the_same_array_and_origin_as_the_lps_nrrd(test_data_dir, tmp_path):
    reference = read_ct(test_data_dir / "lung1_image.nrrd")
    path = tmp_path / "lung1_ras.nii.gz"
    write_ras_nifti(reference, path)
    assert nibabel.aff2axcodes(nibabel.load(str(path)).affine) == ("R", "A", "S")
    volume = read_ct(path)
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.origin == pytest.approx(reference.origin, abs=1e-3)
    assert volume.spacing == pytest.approx(reference.spacing)


def test_mhd_with_raw_pixel_file_reads_like_the_array_it_was_written_from(phantom, tmp_path):
    image = sitk.GetImageFromArray(phantom)
    image.SetSpacing((5.0, 5.0, 10.0))
    sitk.WriteImage(image, str(tmp_path / "scan.mhd"))
    assert (tmp_path / "scan.raw").exists()
    volume = read_ct(tmp_path / "scan.mhd")
    np.testing.assert_array_equal(volume.array, phantom)
    assert volume.spacing == (10.0, 5.0, 5.0)


def test_simpleitk_image_stored_with_permuted_axes_is_reoriented_to_lps(phantom):
    image = sitk.GetImageFromArray(phantom)
    image.SetSpacing((5.0, 5.0, 10.0))
    # the same scan stored with its axes permuted (y fastest, then z, then x) and the direction describing it
    permuted = sitk.PermuteAxes(image, [1, 2, 0])
    volume = read_ct(permuted)
    np.testing.assert_array_equal(volume.array, phantom)
    assert volume.spacing == (10.0, 5.0, 5.0)


def test_float_array_is_rounded_to_int16_and_keeps_the_given_spacing(phantom):
    volume = read_ct(phantom.astype(np.float64) + 0.4, spacing=(10, 5, 5))
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, phantom)
    assert volume.spacing == (10.0, 5.0, 5.0)


def test_torch_tensor_input_reads_like_the_numpy_array(phantom):
    import torch

    volume = read_ct(torch.from_numpy(phantom), spacing=(10, 5, 5))
    np.testing.assert_array_equal(volume.array, phantom)


def test_dicom_series_with_shuffled_file_names_is_ordered_by_position_and_rescaled(phantom, tmp_path):
    write_dicom_series(tmp_path, phantom, (10.0, 5.0, 5.0), rescale_slope=0.5, rescale_intercept=-1100.0)
    volume = read_ct(tmp_path)
    np.testing.assert_array_equal(volume.array, phantom)
    assert volume.spacing == pytest.approx((10.0, 5.0, 5.0))
    assert volume.origin == pytest.approx((-160.0, -160.0, -200.0))
    assert volume.metadata["source_format"] == "dicom"


def test_dicom_metadata_carries_no_patient_identifying_field(phantom, tmp_path):
    write_dicom_series(tmp_path, phantom, (10.0, 5.0, 5.0))
    metadata = read_ct(tmp_path).metadata
    text = repr(metadata)
    for value in ("DOE", "PAT-0001", "19500101", "20200102", "General Hospital", "ACC123", "HOUSE"):
        assert value not in text
    assert metadata["modality"] == "CT"


def test_dicom_folder_with_ct_and_a_non_ct_series_reads_the_ct(phantom, tmp_path):
    write_dicom_series(tmp_path / "ct", phantom, (10.0, 5.0, 5.0))
    write_dicom_series(tmp_path / "pet", phantom[:4] + 1100, (10.0, 5.0, 5.0), modality="PT")
    volume = read_ct(tmp_path)
    np.testing.assert_array_equal(volume.array, phantom)


def test_dicom_folder_with_two_ct_series_raises_listing_both_unless_one_is_chosen(phantom, tmp_path):
    first = write_dicom_series(tmp_path / "a", phantom, (10.0, 5.0, 5.0))
    second = write_dicom_series(tmp_path / "b", phantom[::-1].copy(), (10.0, 5.0, 5.0))
    with pytest.raises(MultipleSeriesError) as raised:
        read_ct(tmp_path)
    assert first in str(raised.value) and second in str(raised.value) and "series_uid" in str(raised.value)
    np.testing.assert_array_equal(read_ct(tmp_path, series_uid=second).array, phantom[::-1])


def test_dicom_series_uid_not_in_the_folder_raises_listing_the_series_found(phantom, tmp_path):
    uid = write_dicom_series(tmp_path, phantom, (10.0, 5.0, 5.0))
    with pytest.raises(MultipleSeriesError, match=uid):
        read_ct(tmp_path, series_uid="1.2.3.4")


def test_dicom_folder_with_only_a_non_ct_modality_raises_not_ct(phantom, tmp_path):
    write_dicom_series(tmp_path, phantom + 1100, (10.0, 5.0, 5.0), modality="MR")
    with pytest.raises(NotCTError, match="MR"):
        read_ct(tmp_path)


def test_dicom_series_with_a_missing_slice_raises_naming_the_gap(phantom, tmp_path):
    write_dicom_series(tmp_path, phantom, (10.0, 5.0, 5.0), drop_slices=(7,))
    with pytest.raises(IrregularSliceSpacingError, match="missing slices"):
        read_ct(tmp_path)


def test_dicom_series_with_uneven_slice_spacing_raises(phantom, tmp_path):
    write_dicom_series(tmp_path, phantom, (10.0, 5.0, 5.0))
    for path in sorted(tmp_path.iterdir())[:3]:
        dataset = pydicom.dcmread(path)
        dataset.ImagePositionPatient[2] = float(dataset.ImagePositionPatient[2]) + 3.7
        dataset.save_as(path)
    with pytest.raises(IrregularSliceSpacingError):
        read_ct(tmp_path)


def test_single_dicom_file_raises_not_a_volume(phantom, tmp_path):
    write_dicom_series(tmp_path, phantom, (10.0, 5.0, 5.0))
    with pytest.raises(NotAVolumeError, match="folder"):
        read_ct(next(tmp_path.iterdir()))


def test_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(CTFileNotFoundError, match="does not exist"):
        read_ct(tmp_path / "nowhere.nii.gz")


def test_corrupt_nifti_file_raises_unreadable(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not a nifti file" * 10)
    with pytest.raises(UnreadableCTError):
        read_ct(path)


def test_unsupported_file_type_raises_unreadable(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(UnreadableCTError, match="Supported"):
        read_ct(path)


def test_empty_folder_raises_empty_series_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(EmptySeriesFolderError, match="No DICOM image"):
        read_ct(tmp_path)


def test_two_dimensional_array_raises_not_a_volume(phantom):
    with pytest.raises(NotAVolumeError):
        read_ct(phantom[10], spacing=(1, 1, 1))


def test_two_dimensional_image_file_raises_not_a_volume(phantom, tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(phantom[10]), str(path))
    with pytest.raises(NotAVolumeError):
        read_ct(path)


@pytest.mark.parametrize("spacing", [(0, 1, 1), (2.5, -0.7, 0.7), (25.0, 0.7, 0.7), (float("nan"), 1, 1), (1, 1)])
def test_absurd_spacing_raises_invalid_spacing(phantom, spacing):
    with pytest.raises(InvalidSpacingError):
        read_ct(phantom, spacing=spacing)


def test_array_without_spacing_raises_asking_for_it(phantom):
    with pytest.raises(InvalidSpacingError, match="spacing="):
        read_ct(phantom)


def test_file_with_absurd_spacing_in_its_header_raises(phantom, tmp_path):
    image = sitk.GetImageFromArray(phantom)
    image.SetSpacing((0.7, 0.7, 40.0))
    sitk.WriteImage(image, str(tmp_path / "thick.nii.gz"))
    with pytest.raises(InvalidSpacingError, match="20"):
        read_ct(tmp_path / "thick.nii.gz")


def test_nan_or_infinite_values_raise(phantom):
    values = phantom.astype(np.float32)
    values[3, 4, 5] = np.nan
    with pytest.raises(NonFiniteValuesError):
        read_ct(values, spacing=(10, 5, 5))
    values[3, 4, 5] = np.inf
    with pytest.raises(NonFiniteValuesError):
        read_ct(values, spacing=(10, 5, 5))


def test_volume_without_air_is_refused_as_not_hounsfield_units(phantom):
    with pytest.raises(NotCTError, match="Hounsfield"):
        read_ct(phantom.astype(np.int32) + 1024, spacing=(10, 5, 5))


def test_volume_above_the_memory_cap_raises_before_reading_pixels(test_data_dir):
    with pytest.raises(VolumeTooLargeError, match="max_input_megabytes"):
        read_ct(test_data_dir / "lung1_image.nrrd", max_input_megabytes=10)


def test_unknown_python_object_raises_unreadable():
    with pytest.raises(UnreadableCTError):
        read_ct({"not": "a ct"})


def test_every_input_error_is_a_lucafound_input_error():
    for error in (CTFileNotFoundError, NotCTError, InvalidSpacingError, IrregularSliceSpacingError, VolumeTooLargeError):
        assert issubclass(error, LuCaFoundInputError)


def test_label_map_reads_onto_the_same_grid_as_its_image(test_data_dir):
    label = read_label(test_data_dir / "lung1_label.nrrd")
    assert label.array.shape == (48, 512, 512)
    assert int(label.array.sum()) == 837


def test_ctvolume_index_to_physical_uses_origin_and_spacing():
    volume = CTVolume(array=np.zeros((2, 2, 2), np.int16), spacing=(5.0, 2.0, 1.0), origin=(10.0, 20.0, 30.0))
    assert volume.index_to_physical((1, 1, 1)) == pytest.approx((11.0, 22.0, 35.0))


def test_chest_phantom_fixture_is_in_lps_with_the_head_at_high_z():
    hu, _ = chest_phantom()
    assert hu.shape[0] * CHEST_SPACING[0] == 240.0
    # the trachea (air at the midline) is in the top slices, the stomach gas in the bottom ones
    assert hu[-1, 60, 64] < -500 and hu[-1, 64, 110] > -200
