"""`LuCaFoundImageProcessor`: any clinical CT -> the (B, C, 48, 256, 256) `pixel_values` the released encoder expects.

Steps (DESIGN.md, "Preprocessing that matches the released weights"): read and reorient to LPS (`ct_io.read_ct`),
lung mask (`lung_segmentation.segment_lungs`) -> bounding box (+ optional margin) -> crop, window HU to [0, 1],
cubic resize to `output_size`. Every preprocessing constant lives in this processor's config, which is saved as
`preprocessor_config.json` next to the model. This file is copied into saved model folders: it imports only torch,
transformers, numpy and the standard library at top level (SimpleITK/scipy are imported lazily by its helpers).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs

from .ct_io import CTVolume, read_ct
from .errors import InvalidPreprocessingOptionError, NoLungsFoundError, TooFewSlicesError
from .lung_segmentation import SEGMENTATION_BACKENDS, bounding_box, segment_body, segment_lungs, upsample_mask


CROP_MODES = ("lung", "body", "none")
# Slices converted to float at a time while windowing and resizing in-plane (bounds the float32 working memory).
SLAB_SLICES = 32
# The configuration of the processor (saved in preprocessor_config.json), in the order of `__init__`.
PROCESSOR_OPTIONS = (
    "output_size",
    "hu_window",
    "crop_mode",
    "crop_margin_mm",
    "channels",
    "max_input_megabytes",
    "minimum_slices",
    "segmentation_backend",
)


class LuCaFoundImagesKwargs(ImagesKwargs, total=False):
    """Options of `LuCaFoundImageProcessor` that `from_pretrained(..., option=value)` may override."""

    output_size: tuple
    hu_window: tuple
    crop_mode: str
    crop_margin_mm: float
    channels: int
    max_input_megabytes: float
    minimum_slices: int
    segmentation_backend: str


def resize_volume(volume, output_size):
    """Cubic resize of a float32 (D, H, W) volume (separable cubic convolution, half-voxel aligned like an area map)."""
    tensor = torch.as_tensor(np.ascontiguousarray(volume, dtype=np.float32))
    depth, height, width = output_size
    if tuple(tensor.shape[1:]) != (height, width):
        tensor = F.interpolate(tensor[:, None], size=(height, width), mode="bicubic", align_corners=False)[:, 0]
    if tensor.shape[0] != depth:
        flat = tensor.reshape(1, 1, tensor.shape[0], height * width)
        tensor = F.interpolate(flat, size=(depth, height * width), mode="bicubic", align_corners=False).reshape(
            depth, height, width
        )
    return tensor.numpy()


def resize_mask(mask, output_size):
    """Linear resize of a boolean (D, H, W) mask, then threshold at 0.5 (DESIGN.md: linear for masks)."""
    tensor = torch.as_tensor(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=tuple(output_size), mode="trilinear", align_corners=False)
    return resized[0, 0].numpy() >= 0.5


class LuCaFoundImageProcessor(BaseImageProcessor):
    r"""Turns chest CTs (paths, DICOM folders, SimpleITK images, arrays) into LuCaFound `pixel_values`.

    Args:
        output_size (`tuple[int, int, int]`, defaults to `(48, 256, 256)`): (D, H, W) of the model input.
        hu_window (`tuple[float, float]`, defaults to `(-1500, 500)`): HU mapped linearly to [0, 1], clipped outside.
        crop_mode (`str`, defaults to `"lung"`): `"lung"` crops to the lung mask's box, `"body"` to the body's box
            (leaves out the air around the patient), `"none"` keeps the whole volume.
        crop_margin_mm (`float`, defaults to 0): margin added around the box on every side (the released weights: 0).
        channels (`int`, defaults to 1): 1, or 3 identical channels (the encoder folds them: same result, 3x cost).
        max_input_megabytes (`float`, defaults to 2048): refuse volumes whose int16 array is larger (peak memory is
            about 4x that).
        minimum_slices (`int`, defaults to 10): refuse volumes with fewer slices.
        segmentation_backend (`str`, defaults to `"builtin"`): `"builtin"` (no weights) or `"lungmask"` (only when
            that package and its weights are installed).
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = LuCaFoundImagesKwargs

    def __init__(
        self,
        output_size=(48, 256, 256),
        hu_window=(-1500, 500),
        crop_mode="lung",
        crop_margin_mm=0.0,
        channels=1,
        max_input_megabytes=2048.0,
        minimum_slices=10,
        segmentation_backend="builtin",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_size = [int(s) for s in output_size]
        self.hu_window = [float(v) for v in hu_window]
        self.crop_mode = crop_mode
        self.crop_margin_mm = float(crop_margin_mm)
        self.channels = int(channels)
        self.max_input_megabytes = float(max_input_megabytes)
        self.minimum_slices = int(minimum_slices)
        self.segmentation_backend = segmentation_backend
        self._check_options()

    def _check_options(self):
        problems = []
        if len(self.output_size) != 3 or min(self.output_size) < 1:
            problems.append(f"output_size must be three positive sizes (D, H, W), got {self.output_size}")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            problems.append(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        if self.crop_mode not in CROP_MODES:
            problems.append(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        if not math.isfinite(self.crop_margin_mm) or self.crop_margin_mm < 0:
            problems.append(f"crop_margin_mm must be >= 0, got {self.crop_margin_mm}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels}")
        if not self.max_input_megabytes > 0:
            problems.append(f"max_input_megabytes must be positive, got {self.max_input_megabytes}")
        if self.minimum_slices < 2:
            problems.append(f"minimum_slices must be at least 2, got {self.minimum_slices}")
        if self.segmentation_backend not in SEGMENTATION_BACKENDS:
            problems.append(
                f"segmentation_backend must be one of {', '.join(SEGMENTATION_BACKENDS)}, got {self.segmentation_backend!r}"
            )
        if problems:
            raise InvalidPreprocessingOptionError("Invalid LuCaFoundImageProcessor options: " + "; ".join(problems) + ".")

    # ------------------------------------------------------------------------------------------------------------
    # the steps, usable one by one (the MONAI transforms and `lucafound preprocess` call these)
    # ------------------------------------------------------------------------------------------------------------

    def load_volume(self, image, spacing=None, series_uid=None):
        """Read one input into a canonical `CTVolume` and check it has enough slices."""
        volume = read_ct(image, spacing=spacing, series_uid=series_uid, max_input_megabytes=self.max_input_megabytes)
        if volume.array.shape[0] < self.minimum_slices:
            raise TooFewSlicesError(
                f"The volume has {volume.array.shape[0]} slices, fewer than the {self.minimum_slices} this processor "
                "needs to see the chest. Pass the whole series (check no slices were left out), or lower "
                "`minimum_slices` if this is really intended."
            )
        return volume

    def region_mask(self, volume):
        """Boolean mask the crop box is taken from (lung region, body, or everything), same shape as the volume."""
        if self.crop_mode == "lung":
            return segment_lungs(volume.array, volume.spacing, backend=self.segmentation_backend)
        if self.crop_mode == "body":
            return segment_body(volume.array, volume.spacing)
        return np.ones(volume.array.shape, dtype=bool)

    def crop_box(self, volume, mask=None):
        """Half-open [[z0, z1], [y0, y1], [x0, x1]] crop box of `volume` for this processor's crop mode and margin."""
        if mask is None:
            mask = self.region_mask(volume)
        box = bounding_box(mask)
        if box is None:
            raise NoLungsFoundError(f"The {self.crop_mode} mask is empty: nothing to crop to. Is this a chest CT?")
        if self.crop_margin_mm > 0:
            for axis, (size, step) in enumerate(zip(volume.array.shape, volume.spacing)):
                margin = int(math.ceil(self.crop_margin_mm / step - 1e-6))
                box[axis] = [max(0, box[axis][0] - margin), min(size, box[axis][1] + margin)]
        return box

    def window(self, hounsfield):
        """Clip HU to `hu_window` and map it linearly to [0, 1] (float32)."""
        low, high = self.hu_window
        values = np.array(hounsfield, dtype=np.float32)  # always a copy: the caller's HU stay untouched
        np.clip(values, low, high, out=values)
        values -= low
        values /= high - low
        return values

    def window_and_resize(self, hounsfield):
        """Window a (D, H, W) HU crop and resize it cubically to `output_size`, slab by slab; values in [0, 1]."""
        depth, height, width = self.output_size
        in_plane = np.empty((hounsfield.shape[0], height, width), dtype=np.float32)
        for start in range(0, hounsfield.shape[0], SLAB_SLICES):
            slab = self.window(hounsfield[start : start + SLAB_SLICES])
            in_plane[start : start + SLAB_SLICES] = resize_volume(slab, (slab.shape[0], height, width))
        resized = resize_volume(in_plane, (depth, height, width))
        return np.clip(resized, 0.0, 1.0, out=resized)

    def preprocess_volume(self, image, spacing=None, series_uid=None, return_mask=False):
        """One input -> dict with `pixel_values` (C, D, H, W) float32, `crop_info`, and on request the `volume` and `mask`."""
        volume = self.load_volume(image, spacing=spacing, series_uid=series_uid)
        mask = self.region_mask(volume)
        box = self.crop_box(volume, mask)
        (z0, z1), (y0, y1), (x0, x1) = box
        pixel_values = self.window_and_resize(volume.array[z0:z1, y0:y1, x0:x1])[None]
        if self.channels == 3:
            pixel_values = np.repeat(pixel_values, 3, axis=0)
        crop_info = {
            "bbox": box,
            "spacing": tuple(float(s) for s in volume.spacing),
            "origin": tuple(float(o) for o in volume.origin),
            "shape": tuple(int(s) for s in volume.array.shape),
        }
        result = {"pixel_values": pixel_values, "crop_info": crop_info}
        if return_mask:
            result["volume"] = volume
            result["mask"] = mask
        return result

    # ------------------------------------------------------------------------------------------------------------

    def __call__(self, images, spacing=None, series_uid=None, return_crop_info=False, return_tensors=None, **kwargs):
        """Preprocess one CT or a list of CTs; see `preprocess`."""
        return self.preprocess(
            images,
            spacing=spacing,
            series_uid=series_uid,
            return_crop_info=return_crop_info,
            return_tensors=return_tensors,
            **kwargs,
        )

    def preprocess(self, images, spacing=None, series_uid=None, return_crop_info=False, return_tensors=None, **kwargs):
        """CT input(s) -> `BatchFeature` with `pixel_values` (B, C, D, H, W) in [0, 1] and, on request, `crop_info`.

        `images`: one input or a list of them (a DICOM series folder, a .nii/.nii.gz/.nrrd/.mhd path, a SimpleITK
        image, a `CTVolume`, or a (z, y, x) HU array with `spacing`), or a (B, z, y, x) array. `spacing`: (z, y, x) mm
        for array inputs, one for all or a list with one per input. Options given here override the config once.
        """
        if kwargs:
            unknown = sorted(set(kwargs) - set(PROCESSOR_OPTIONS))
            if unknown:
                raise InvalidPreprocessingOptionError(f"Unknown image processor option(s): {', '.join(unknown)}.")
            overridden = type(self)(**{**self._options(), **kwargs})
            return overridden.preprocess(images, spacing, series_uid, return_crop_info, return_tensors)
        inputs = self._as_list(images)
        spacings = self._per_input(spacing, len(inputs), "spacing", nested=True)
        series_uids = self._per_input(series_uid, len(inputs), "series_uid", nested=False)
        pixel_values, crop_infos = [], []
        for image, image_spacing, image_series_uid in zip(inputs, spacings, series_uids):
            result = self.preprocess_volume(image, spacing=image_spacing, series_uid=image_series_uid)
            pixel_values.append(result["pixel_values"])
            crop_infos.append(result["crop_info"])
        data = {"pixel_values": np.stack(pixel_values)}
        batch = BatchFeature(data=data, tensor_type=return_tensors)
        if return_crop_info:
            batch["crop_info"] = crop_infos
        return batch

    @staticmethod
    def _as_list(images):
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise InvalidPreprocessingOptionError("No images given: pass a CT (path, image or array) or a list of them.")
            return list(images)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return list(images)
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            return list(images)
        return [images]

    @staticmethod
    def _per_input(value, count, name, nested):
        if value is None:
            return [None] * count
        if nested:
            is_list = len(value) > 0 and isinstance(value[0], (list, tuple, np.ndarray))
        else:
            is_list = isinstance(value, (list, tuple))
        if not is_list:
            return [value] * count
        if len(value) != count:
            raise InvalidPreprocessingOptionError(f"Got {len(value)} values of {name} for {count} images; give one per image.")
        return list(value)

    def _options(self):
        return {name: getattr(self, name) for name in PROCESSOR_OPTIONS}

    def to_dict(self):
        output = super().to_dict()
        for key in list(output):
            if key.startswith("_"):
                output.pop(key)
        return output


LuCaFoundImageProcessor.register_for_auto_class("AutoImageProcessor")
