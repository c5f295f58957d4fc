"""Tiny saved LuCaFound folders and small chest CTs on disk, shared by the embed, pipeline, card and push tests."""

from pathlib import Path

import numpy as np

from tiny_models import tiny_config

# small enough for two CPU cores, large enough for the windows of the tiny encoder
TINY_OUTPUT_SIZE = (8, 32, 32)
SCAN_SHAPE = (32, 80, 80)
SCAN_SPACING = (6.0, 4.4, 4.4)


def save_tiny_lucafound_folder(folder, with_tokenizer=False, seed=0):
    """A randomly initialised tiny LuCaFoundModel saved with its image processor (and a report tokenizer)."""
    import torch

    from modeling_lucafound.image_processing_lucafound import LuCaFoundImageProcessor
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel

    folder = Path(folder)
    torch.manual_seed(seed)
    model = LuCaFoundModel(tiny_config())
    model.save_pretrained(folder)
    image_processor = LuCaFoundImageProcessor(output_size=TINY_OUTPUT_SIZE)
    if with_tokenizer:
        from modeling_lucafound.processing_lucafound import LuCaFoundProcessor
        from modeling_lucafound.report_tokenizer import train_report_tokenizer

        texts = [chest_scan(seed).report for seed in range(4)] + ["a spiculated mass", "no nodule"]
        tokenizer = train_report_tokenizer(texts, vocab_size=120, model_max_length=64)
        LuCaFoundProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    else:
        image_processor.save_pretrained(folder)
    return folder


def chest_scan(seed, shape=SCAN_SHAPE, spacing=SCAN_SPACING):
    from datasets_scripts.phantoms import generate_chest_phantom

    return generate_chest_phantom(seed, shape=shape, spacing=spacing)


def write_image_file(path, hu, spacing, origin=(0.0, 0.0, 0.0)):
    """Write an int16 (z, y, x) LPS HU array as NIfTI / NRRD / MetaImage (by suffix) with SimpleITK."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(hu, dtype=np.int16))
    image.SetSpacing(tuple(float(value) for value in spacing[::-1]))
    image.SetOrigin(tuple(float(value) for value in origin))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return Path(path)


def write_chest_file(path, seed):
    scan = chest_scan(seed)
    return write_image_file(path, scan.hu, scan.spacing, scan.origin)
