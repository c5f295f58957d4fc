"""Tests for `modeling_lucafound.lung_segmentation`: both lungs found on the real CT and on phantoms at any slice
thickness, tumours touching the chest wall or in the mediastinum kept in the lung region, no lungs -> error."""

import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ct_phantoms import CHEST_SPACING, chest_phantom, head_phantom
from modeling_lucafound.ct_io import read_ct, read_label
from modeling_lucafound.errors import InvalidPreprocessingOptionError, LungSegmentationBackendError, NoLungsFoundError
from modeling_lucafound.lung_segmentation import bounding_box, bridge_mediastinum, segment_body, segment_lungs


@pytest.fixture(scope="module")
def real_ct(test_data_dir):
    volume = read_ct(test_data_dir / "lung1_image.nrrd")
    tumour = read_label(test_data_dir / "lung1_label.nrrd").array > 0
    return volume, tumour, segment_lungs(volume.array, volume.spacing)


@pytest.fixture(scope="module")
def phantom_with_masses():
    hu, tumours = chest_phantom(masses=("juxtapleural", "mediastinal"))
    return hu, tumours, segment_lungs(hu, CHEST_SPACING)


def test_real_ct_lung_mask_contains_the_whole_tumour_label(real_ct):
    _, tumour, mask = real_ct
    assert np.all(mask[tumour])


def test_real_ct_lung_mask_covers_both_lungs(real_ct):
    volume, _, mask = real_ct
    millilitres = np.prod(volume.spacing) / 1000.0
    middle = volume.array.shape[2] // 2
    assert mask[:, :, :middle].sum() * millilitres > 500
    assert mask[:, :, middle:].sum() * millilitres > 500
    # every voxel of the large air regions inside the body below the apices (slices 0..39) is in the lung box
    inside_air = (volume.array < -400) & segment_body(volume.array, volume.spacing)
    inside_air[40:] = False
    labels, _ = ndimage.label(inside_air)
    sizes = np.bincount(labels.ravel()) * millilitres
    sizes[0] = 0
    large_air = (sizes > 100.0)[labels]
    (z0, z1), (y0, y1), (x0, x1) = bounding_box(mask)
    assert large_air.sum() * millilitres > 2000
    assert large_air[z0:z1, y0:y1, x0:x1].sum() >= 0.999 * large_air.sum()


def test_real_ct_lung_mask_leaves_out_the_trachea_above_the_lungs(real_ct):
    _, _, mask = real_ct
    # slices 44..47 show only the trachea in the neck
    assert not mask[44:].any()


def test_real_ct_lung_box_leaves_out_the_air_outside_the_body(real_ct):
    volume, _, mask = real_ct
    outside = ~segment_body(volume.array, volume.spacing)
    (z0, z1), (y0, y1), (x0, x1) = bounding_box(mask)
    assert outside.mean() > 0.3
    assert outside[z0:z1, y0:y1, x0:x1].mean() < 0.05  # only the corners of the box around the rounded chest


def test_mass_touching_the_chest_wall_is_inside_the_lung_region(phantom_with_masses):
    _, tumours, mask = phantom_with_masses
    assert mask[tumours["juxtapleural"]].mean() > 0.95


def test_mass_in_the_mediastinum_is_inside_the_lung_region(phantom_with_masses):
    _, tumours, mask = phantom_with_masses
    assert mask[tumours["mediastinal"]].mean() > 0.95


def test_phantom_mask_leaves_out_stomach_gas_and_trachea(phantom_with_masses):
    _, _, mask = phantom_with_masses
    # stomach gas around z = 25 mm (slices 2..7); trachea alone in the top slices 43..47
    assert not mask[:8].any()
    assert not mask[43:].any()


def test_phantom_with_1_mm_and_5_mm_slices_gives_the_same_physical_box():
    thick, _ = chest_phantom(shape=(48, 96, 96), spacing=(5.0, 10 / 3, 10 / 3), noise_std=5.0)
    thin, _ = chest_phantom(shape=(240, 96, 96), spacing=(1.0, 10 / 3, 10 / 3), noise_std=5.0)
    boxes_mm = []
    for hu, spacing in ((thick, (5.0, 10 / 3, 10 / 3)), (thin, (1.0, 10 / 3, 10 / 3))):
        box = np.asarray(bounding_box(segment_lungs(hu, spacing)), dtype=float)
        boxes_mm.append(box * np.asarray(spacing)[:, None])
    np.testing.assert_allclose(boxes_mm[0], boxes_mm[1], atol=5.0)


def test_sub_millimetre_in_plane_spacing_is_segmented_like_the_coarse_grid():
    coarse, _ = chest_phantom(shape=(24, 128, 128), spacing=(10.0, 2.5, 2.5), noise_std=5.0)
    fine, _ = chest_phantom(shape=(24, 512, 512), spacing=(10.0, 0.625, 0.625), noise_std=5.0)
    coarse_box = np.asarray(bounding_box(segment_lungs(coarse, (10.0, 2.5, 2.5))), float) * [[10.0], [2.5], [2.5]]
    fine_box = np.asarray(bounding_box(segment_lungs(fine, (10.0, 0.625, 0.625))), float) * [[10.0], [0.625], [0.625]]
    np.testing.assert_allclose(coarse_box, fine_box, atol=3.0)


def test_head_ct_without_lungs_raises_no_lungs_found():
    with pytest.raises(NoLungsFoundError, match="chest CT"):
        segment_lungs(head_phantom(), (4.0, 2.5, 2.5))


def test_unknown_backend_raises_invalid_option():
    hu, _ = chest_phantom(shape=(16, 32, 32), spacing=(15.0, 10.0, 10.0))
    with pytest.raises(InvalidPreprocessingOptionError, match="builtin"):
        segment_lungs(hu, (15.0, 10.0, 10.0), backend="unet")


def test_lungmask_backend_without_the_package_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lungmask", None)  # import fails as if it were not installed
    hu, _ = chest_phantom(shape=(16, 32, 32), spacing=(15.0, 10.0, 10.0))
    with pytest.raises(LungSegmentationBackendError, match="pip install lungmask"):
        segment_lungs(hu, (15.0, 10.0, 10.0), backend="lungmask")


def test_mediastinal_bridge_fills_narrow_gaps_only():
    row = np.zeros((1, 1, 40), dtype=bool)
    row[..., 0:5] = row[..., 10:15] = row[..., 35:40] = True  # gaps of 5 and 20 voxels
    filled = bridge_mediastinum(row, x_spacing=2.0, maximum_gap_mm=10.0)
    assert filled[..., 5:10].all() and not filled[..., 15:35].any()


def test_resampled_copy_at_other_spacing_gives_the_same_lung_box_in_millimetres(real_ct, test_data_dir):
    volume, _, mask = real_ct
    image = sitk.ReadImage(str(test_data_dir / "lung1_image.nrrd"))
    new_spacing = (0.9, 0.9, 2.5)
    new_size = [int(round(size * old / new)) for size, old, new in zip(image.GetSize(), image.GetSpacing(), new_spacing)]
    resampled = sitk.Resample(
        image, new_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), new_spacing, image.GetDirection(), -1024
    )
    other = read_ct(resampled)
    other_box = np.asarray(bounding_box(segment_lungs(other.array, other.spacing)), float)
    box = np.asarray(bounding_box(mask), float)
    # physical edges of the boxes (voxel edges, mm from the shared origin) agree within one slice and 3 mm
    to_mm = lambda b, spacing: (b - 0.5) * np.asarray(spacing)[:, None]  # noqa: E731
    difference = np.abs(to_mm(box, volume.spacing) - to_mm(other_box, other.spacing))
    assert difference[0].max() <= 5.0 + 1e-6
    assert difference[1:].max() <= 3.0
