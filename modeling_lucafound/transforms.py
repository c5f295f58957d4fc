"""The `LuCaFoundImageProcessor` steps as MONAI dictionary transforms, for training pipelines.

Each transform calls the processor's own step functions, so a pipeline built here produces exactly the processor's
`pixel_values` and crop boxes; label masks (e.g. a tumour segmentation) are cropped with the same box and resized
linearly then thresholded. All transforms are deterministic: cache them (MONAI `CacheDataset`) and put random
augmentations after them. This module is not copied into saved model folders, so it imports MONAI at top level.
"""

import numpy as np
from monai.transforms import Compose, MapTransform

from .image_processing_lucafound import LuCaFoundImageProcessor, resize_mask


class LoadCTd(MapTransform):
    """Read each key's CT (path, folder, SimpleITK image or array) into canonical int16 HU (z, y, x) LPS.

    Adds `<key>_spacing` (z, y, x) mm and `<key>_origin` (x, y, z) mm. For array inputs the spacing is taken from
    `spacing_key` in the same dictionary.
    """

    def __init__(self, keys, processor=None, spacing_key=None, series_uid_key=None, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.processor = processor or LuCaFoundImageProcessor()
        self.spacing_key = spacing_key
        self.series_uid_key = series_uid_key

    def __call__(self, data):
        data = dict(data)
        for key in self.key_iterator(data):
            volume = self.processor.load_volume(
                data[key],
                spacing=data.get(self.spacing_key) if self.spacing_key else None,
                series_uid=data.get(self.series_uid_key) if self.series_uid_key else None,
            )
            data[key] = volume.array
            data[f"{key}_spacing"] = volume.spacing
            data[f"{key}_origin"] = volume.origin
        return data


class CropToRegiond(MapTransform):
    """Crop `keys` to the processor's crop box (lung / body / none, plus margin) computed on `image_key`.

    Adds `crop_info` (same dict as the processor returns) and, with `mask_key`, the cropped region mask.
    """

    def __init__(self, keys, image_key="image", processor=None, mask_key=None, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.processor = processor or LuCaFoundImageProcessor()
        self.mask_key = mask_key

    def __call__(self, data):
        from .ct_io import CTVolume

        data = dict(data)
        volume = CTVolume(
            array=data[self.image_key],
            spacing=data[f"{self.image_key}_spacing"],
            origin=data.get(f"{self.image_key}_origin", (0.0, 0.0, 0.0)),
        )
        mask = self.processor.region_mask(volume)
        box = self.processor.crop_box(volume, mask)
        region = tuple(slice(start, stop) for start, stop in box)
        for key in self.key_iterator(data):
            if tuple(np.shape(data[key])[-3:]) != volume.array.shape:
                raise ValueError(f"{key!r} has shape {np.shape(data[key])}, not the image's {volume.array.shape}.")
            data[key] = data[key][(Ellipsis,) + region]
        if self.mask_key:
            data[self.mask_key] = mask[region]
        data["crop_info"] = {
            "bbox": box,
            "spacing": tuple(float(s) for s in volume.spacing),
            "origin": tuple(float(o) for o in volume.origin),
            "shape": tuple(int(s) for s in volume.array.shape),
        }
        return data


class WindowAndResized(MapTransform):
    """Window HU to [0, 1] and resize cubically to the processor's output size; adds the channel axis (C, D, H, W)."""

    def __init__(self, keys, processor=None, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.processor = processor or LuCaFoundImageProcessor()

    def __call__(self, data):
        data = dict(data)
        for key in self.key_iterator(data):
            pixel_values = self.processor.window_and_resize(np.asarray(data[key]))[None]
            if self.processor.channels == 3:
                pixel_values = np.repeat(pixel_values, 3, axis=0)
            data[key] = pixel_values
        return data


class ResizeMaskd(MapTransform):
    """Resize boolean masks (tumour labels, lung mask) linearly to the processor's output size, then threshold."""

    def __init__(self, keys, processor=None, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.processor = processor or LuCaFoundImageProcessor()

    def __call__(self, data):
        data = dict(data)
        for key in self.key_iterator(data):
            data[key] = resize_mask(np.asarray(data[key]) > 0, self.processor.output_size)[None]
        return data


def lucafound_transforms(processor=None, image_key="image", mask_keys=(), spacing_key=None, region_mask_key=None):
    """The processor's full deterministic pipeline as one MONAI `Compose`: load, crop, window + resize image, masks.

    `mask_keys` are label masks on the same grid as the image (cropped with its box, resized linearly then
    thresholded); `region_mask_key` also stores the lung (or body) mask the box came from.
    """
    processor = processor or LuCaFoundImageProcessor()
    mask_keys = list(mask_keys)
    region_keys = mask_keys + ([region_mask_key] if region_mask_key else [])
    steps = [
        LoadCTd([image_key], processor=processor, spacing_key=spacing_key),
        CropToRegiond([image_key] + mask_keys, image_key=image_key, processor=processor, mask_key=region_mask_key),
        WindowAndResized([image_key], processor=processor),
    ]
    if region_keys:
        steps.append(ResizeMaskd(region_keys, processor=processor))
    return Compose(steps)
