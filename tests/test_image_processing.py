"""Tests for `LuCaFoundImageProcessor` (and its MONAI transforms): output shape and range, crop boxes that keep the
tumour, orientation independence, saving/loading through AutoImageProcessor, and refusal of unusable input."""

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ct_phantoms import CHEST_SPACING, chest_phantom
from modeling_lucafound.ct_io import read_ct, read_label
from modeling_lucafound.errors import InvalidPreprocessingOptionError, NoLungsFoundError, TooFewSlicesError, VolumeTooLargeError
from modeling_lucafound.image_processing_lucafound import LuCaFoundImageProcessor, resize_mask, resize_volume
from modeling_lucafound.lung_segmentation import bounding_box
from test_ct_io import write_ras_nifti

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_lucafound"


@pytest.fixture(scope="module")
def processor():
    return LuCaFoundImageProcessor()


@pytest.fixture(scope="module")
def real_output(processor, test_data_dir):
    return processor(test_data_dir / "lung1_image.nrrd", return_crop_info=True)


def test_real_ct_gives_one_grey_volume_of_48x256x256_in_unit_range(real_output):
    pixel_values = real_output["pixel_values"]
    assert pixel_values.shape == (1, 1, 48, 256, 256)
    assert pixel_values.dtype == np.float32
    assert pixel_values.min() >= 0.0 and pixel_values.max() <= 1.0
    assert pixel_values.max() == 1.0  # bone reaches the top of the window


def test_real_ct_crop_box_contains_the_whole_tumour_label(real_output, test_data_dir):
    tumour = read_label(test_data_dir / "lung1_label.nrrd").array > 0
    (z0, z1), (y0, y1), (x0, x1) = real_output["crop_info"][0]["bbox"]
    assert tumour[z0:z1, y0:y1, x0:x1].sum() == tumour.sum() == 837


def test_crop_info_records_the_box_and_spacing_of_the_canonical_grid(real_output):
    info = real_output["crop_info"][0]
    assert info["spacing"] == pytest.approx((5.0, 0.5703125, 0.5703125))
    assert info["shape"] == (48, 512, 512)
    for (start, stop), size in zip(info["bbox"], info["shape"]):
        assert 0 <= start < stop <= size


def test_same_scan_saved_as_ras_nifti_gives_the_same_pixel_values(processor, real_output, test_data_dir, tmp_path):
    path = tmp_path / "lung1_ras.nii"
    write_ras_nifti(read_ct(test_data_dir / "lung1_image.nrrd"), path)
    output = processor(path, return_crop_info=True)
    assert output["crop_info"][0]["bbox"] == real_output["crop_info"][0]["bbox"]
    assert np.abs(output["pixel_values"] - real_output["pixel_values"]).max() <= 1e-3


def test_window_maps_the_hounsfield_range_linearly_to_zero_one(processor):
    values = processor.window(np.array([-3000, -1500, -500, 500, 3000], dtype=np.int16))
    np.testing.assert_allclose(values, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_three_channels_are_identical_copies(test_data_dir):
    hu, _ = chest_phantom(shape=(24, 64, 64), spacing=(10.0, 5.0, 5.0))
    output = LuCaFoundImageProcessor(channels=3, output_size=(8, 32, 32))(hu, spacing=(10.0, 5.0, 5.0))
    pixel_values = output["pixel_values"]
    assert pixel_values.shape == (1, 3, 8, 32, 32)
    assert np.array_equal(pixel_values[:, 0], pixel_values[:, 1]) and np.array_equal(pixel_values[:, 0], pixel_values[:, 2])


def test_list_of_inputs_gives_a_batch_with_one_crop_info_each_and_torch_tensors():
    small = LuCaFoundImageProcessor(output_size=(8, 32, 32))
    first, _ = chest_phantom(shape=(24, 64, 64), spacing=(10.0, 5.0, 5.0))
    second, _ = chest_phantom(shape=(48, 64, 64), spacing=(5.0, 5.0, 5.0), seed=1)
    output = small([first, second], spacing=[(10.0, 5.0, 5.0), (5.0, 5.0, 5.0)], return_crop_info=True, return_tensors="pt")
    assert isinstance(output["pixel_values"], torch.Tensor)
    assert tuple(output["pixel_values"].shape) == (2, 1, 8, 32, 32)
    assert [info["spacing"] for info in output["crop_info"]] == [(10.0, 5.0, 5.0), (5.0, 5.0, 5.0)]


@pytest.mark.parametrize("mass", ["juxtapleural", "mediastinal"])
def test_phantom_mass_is_inside_the_crop(mass):
    hu, tumours = chest_phantom(masses=(mass,))
    info = LuCaFoundImageProcessor(output_size=(8, 32, 32))(hu, spacing=CHEST_SPACING, return_crop_info=True)["crop_info"][0]
    (z0, z1), (y0, y1), (x0, x1) = info["bbox"]
    assert tumours[mass][z0:z1, y0:y1, x0:x1].sum() == tumours[mass].sum()


def test_crop_modes_nest_none_contains_body_contains_lung():
    hu, _ = chest_phantom()
    boxes = {}
    for mode in ("lung", "body", "none"):
        processor = LuCaFoundImageProcessor(crop_mode=mode, output_size=(8, 32, 32))
        boxes[mode] = processor(hu, spacing=CHEST_SPACING, return_crop_info=True)["crop_info"][0]["bbox"]
    assert boxes["none"] == [[0, 48], [0, 128], [0, 128]]
    for inner, outer in (("lung", "body"), ("body", "none")):
        for (a0, a1), (b0, b1) in zip(boxes[inner], boxes[outer]):
            assert b0 <= a0 < a1 <= b1
    assert boxes["body"][1] != [0, 128]  # the air in front of and behind the body is cut off


def test_crop_margin_in_millimetres_widens_the_box_per_axis_spacing():
    hu, _ = chest_phantom()
    plain = LuCaFoundImageProcessor(output_size=(8, 32, 32))(hu, spacing=CHEST_SPACING, return_crop_info=True)
    wide = LuCaFoundImageProcessor(output_size=(8, 32, 32), crop_margin_mm=10.0)(hu, spacing=CHEST_SPACING, return_crop_info=True)
    for (a0, a1), (b0, b1), step in zip(plain["crop_info"][0]["bbox"], wide["crop_info"][0]["bbox"], CHEST_SPACING):
        margin = int(np.ceil(10.0 / step))
        assert b0 == max(0, a0 - margin) and b1 == min(hu.shape[0] if step == 5.0 else 128, a1 + margin)


def test_options_given_at_call_time_override_the_config_once():
    hu, _ = chest_phantom(shape=(24, 64, 64), spacing=(10.0, 5.0, 5.0))
    processor = LuCaFoundImageProcessor(output_size=(8, 32, 32))
    output = processor(hu, spacing=(10.0, 5.0, 5.0), crop_mode="none", return_crop_info=True)
    assert output["crop_info"][0]["bbox"] == [[0, 24], [0, 64], [0, 64]]
    assert processor.crop_mode == "lung"


def test_save_and_load_through_auto_image_processor_with_remote_code(tmp_path, test_data_dir):
    from transformers import AutoImageProcessor

    LuCaFoundImageProcessor(crop_margin_mm=5.0, channels=3).save_pretrained(tmp_path)
    config = (tmp_path / "preprocessor_config.json").read_text()
    assert '"AutoImageProcessor": "image_processing_lucafound.LuCaFoundImageProcessor"' in config
    for copied in ("image_processing_lucafound.py", "ct_io.py", "lung_segmentation.py", "errors.py"):
        assert (tmp_path / copied).exists()
    loaded = AutoImageProcessor.from_pretrained(str(tmp_path), trust_remote_code=True)
    assert type(loaded).__module__.startswith("transformers_modules")
    assert (loaded.crop_margin_mm, loaded.channels, loaded.hu_window) == (5.0, 3, [-1500.0, 500.0])
    hu, _ = chest_phantom(shape=(24, 64, 64), spacing=(10.0, 5.0, 5.0))
    reference = LuCaFoundImageProcessor(crop_margin_mm=5.0, channels=3)(hu, spacing=(10.0, 5.0, 5.0))
    np.testing.assert_array_equal(loaded(hu, spacing=(10.0, 5.0, 5.0))["pixel_values"], reference["pixel_values"])


@pytest.mark.parametrize(
    "options",
    [{"crop_mode": "chest"}, {"channels": 2}, {"hu_window": (500, -1500)}, {"output_size": (48, 256)}, {"crop_margin_mm": -1}],
)
def test_invalid_options_raise_naming_the_option(options):
    with pytest.raises(InvalidPreprocessingOptionError, match=next(iter(options))):
        LuCaFoundImageProcessor(**options)


def test_too_few_slices_raise():
    hu, _ = chest_phantom(shape=(6, 64, 64), spacing=(20.0, 5.0, 5.0))
    with pytest.raises(TooFewSlicesError, match="minimum_slices"):
        LuCaFoundImageProcessor()(hu, spacing=(20.0, 5.0, 5.0))


def test_volume_over_the_memory_cap_raises():
    hu, _ = chest_phantom(shape=(24, 64, 64), spacing=(10.0, 5.0, 5.0))
    with pytest.raises(VolumeTooLargeError):
        LuCaFoundImageProcessor(max_input_megabytes=0.1)(hu, spacing=(10.0, 5.0, 5.0))


def test_scan_without_lungs_raises_no_lungs_found():
    from ct_phantoms import head_phantom

    with pytest.raises(NoLungsFoundError):
        LuCaFoundImageProcessor()(head_phantom(), spacing=(4.0, 2.5, 2.5))


def test_cubic_resize_keeps_a_smooth_ramp_and_linear_mask_resize_keeps_a_cube():
    ramp = np.broadcast_to(np.linspace(0, 1, 64, dtype=np.float32), (16, 64, 64))
    resized = resize_volume(ramp, (8, 32, 32))
    # output voxel j covers source voxels 2j, 2j+1: its centre is source position 2j + 0.5, where the ramp is (2j + 0.5)/63
    interior = np.arange(2, 30)
    np.testing.assert_allclose(resized[4, 10, 2:30], (2 * interior + 0.5) / 63, atol=1e-5)
    np.testing.assert_allclose(resized[0], resized[7], atol=1e-6)
    assert np.all(np.diff(resized[4, 10, 2:-2]) > 0)
    cube = np.zeros((16, 64, 64), dtype=bool)
    cube[4:12, 16:48, 16:48] = True
    small = resize_mask(cube, (8, 32, 32))
    assert small.dtype == bool and small.sum() == 4 * 16 * 16


def test_monai_transforms_give_the_processors_pixel_values_and_crop_the_label(test_data_dir, processor, real_output):
    from modeling_lucafound.transforms import lucafound_transforms

    label = read_label(test_data_dir / "lung1_label.nrrd").array
    pipeline = lucafound_transforms(processor, mask_keys=["label"], region_mask_key="lung_mask")
    data = pipeline({"image": str(test_data_dir / "lung1_image.nrrd"), "label": label})
    np.testing.assert_array_equal(np.asarray(data["image"])[None], real_output["pixel_values"])
    assert data["crop_info"]["bbox"] == real_output["crop_info"][0]["bbox"]
    assert tuple(np.shape(data["label"])) == (1, 48, 256, 256) and np.asarray(data["label"]).any()
    assert tuple(np.shape(data["lung_mask"])) == (1, 48, 256, 256)


def test_files_copied_into_model_folders_import_only_torch_transformers_numpy_at_top_level():
    allowed = {"torch", "transformers", "numpy"} | set(sys.stdlib_module_names)
    for name in ("image_processing_lucafound.py", "ct_io.py", "lung_segmentation.py", "errors.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{name}: only one-dot relative imports are copied"
                roots = [] if node.level == 1 else [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{name} imports {roots} at top level"


@pytest.mark.parametrize("location", ["juxtapleural", "mediastinal"])
def test_synthetic_cohort_mass_is_inside_the_crop_wherever_it_lies_within_the_lungs_extent(location):
    # the cohort's juxtapleural masses reach partly into the chest wall, outside the pleura; every mass voxel inside
    # the extent of the true lungs must be in the crop at the default margin of 0
    from datasets_scripts.phantoms import generate_chest_phantom

    processor = LuCaFoundImageProcessor(output_size=(8, 32, 32))
    for seed in range(3):
        phantom = generate_chest_phantom(
            seed, shape=(64, 128, 128), primary_lesion={"location": location, "diameter_mm": 45, "further_nodules": 0}
        )
        output = processor(phantom.hu, spacing=phantom.spacing, return_crop_info=True)
        crop = tuple(slice(start, stop) for start, stop in output["crop_info"][0]["bbox"])
        lungs_extent = tuple(slice(start, stop) for start, stop in bounding_box(phantom.lung_mask))
        lesion_within_lungs = np.zeros_like(phantom.lesion_mask)
        lesion_within_lungs[lungs_extent] = phantom.lesion_mask[lungs_extent]
        assert lesion_within_lungs.sum() > 0.8 * phantom.lesion_mask.sum()
        assert lesion_within_lungs[crop].sum() == lesion_within_lungs.sum()
