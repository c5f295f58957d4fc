"""`transformers.pipeline("image-feature-extraction", model=FOLDER, trust_remote_code=True)` for LuCaFound CTs.

A custom pipeline that takes a CT (DICOM series folder, .nii/.nii.gz/.nrrd/.mhd path, SimpleITK image or HU array
with `spacing`) and returns the pooled CT feature. `add_feature_extraction_pipeline(folder)` registers it in a saved
model folder: it copies this file there and adds the `custom_pipelines` entry to `config.json`, exactly what
`PIPELINE_REGISTRY.register_pipeline` + `Pipeline.save_pretrained` write, without replacing transformers' own
"image-feature-extraction" pipeline in the running process. This file is copied into saved folders: it imports only
torch, transformers, numpy and the standard library.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import Pipeline


PIPELINE_TASK = "image-feature-extraction"


class LuCaFoundFeatureExtractionPipeline(Pipeline):
    """CT in, LuCaFound CT feature out (the encoder's pooled output, 1024 numbers for Swin3D-B).

    Call with one CT or a list. Options: `spacing` (z, y, x) mm for array inputs, `series_uid` for a folder holding
    several series, `return_tensors=True` for a (1, hidden) torch tensor instead of a list of floats,
    `return_crop_info=True` for a dict with the `feature` and the lung `crop_info`.
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, spacing=None, series_uid=None, return_tensors=None, return_crop_info=None, **kwargs):
        preprocess_parameters = {}
        if spacing is not None:
            preprocess_parameters["spacing"] = spacing
        if series_uid is not None:
            preprocess_parameters["series_uid"] = series_uid
        postprocess_parameters = {}
        if return_tensors is not None:
            postprocess_parameters["return_tensors"] = return_tensors
        if return_crop_info is not None:
            postprocess_parameters["return_crop_info"] = return_crop_info
        return preprocess_parameters, {}, postprocess_parameters

    def preprocess(self, image, spacing=None, series_uid=None):
        if isinstance(image, os.PathLike):
            image = str(image)
        encoded = self.image_processor(
            image, spacing=spacing, series_uid=series_uid, return_crop_info=True, return_tensors="pt"
        )
        return {"pixel_values": encoded["pixel_values"].to(self.dtype or torch.float32), "crop_info": encoded["crop_info"]}

    def _forward(self, model_inputs):
        encoder = self.model.vision_model if hasattr(self.model, "vision_model") else self.model
        outputs = encoder(pixel_values=model_inputs["pixel_values"], return_dict=True)
        return {"feature": outputs.pooler_output, "crop_info": model_inputs["crop_info"]}

    def postprocess(self, model_outputs, return_tensors=False, return_crop_info=False):
        feature = model_outputs["feature"].float()
        if not return_tensors:
            feature = feature[0].tolist()
        if return_crop_info:
            return {"feature": feature, "crop_info": model_outputs["crop_info"][0]}
        return feature


def pipeline_registration():
    """The `custom_pipelines` entry of config.json, as `Pipeline.save_pretrained` writes it for this class."""
    return {
        PIPELINE_TASK: {
            "impl": f"{Path(__file__).stem}.{LuCaFoundFeatureExtractionPipeline.__name__}",
            "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }


def add_feature_extraction_pipeline(folder):
    """Register the CT feature-extraction pipeline in a saved model folder (copies this file, updates config.json)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json: save the model there first.")
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise FileNotFoundError(
            f"{str(folder)!r} has no preprocessor_config.json or processor_config.json: the pipeline needs the image "
            "processor saved with the model (`LuCaFoundImageProcessor(...).save_pretrained(folder)`)."
        )
    destination = folder / Path(__file__).name
    if Path(__file__).resolve() != destination.resolve():
        shutil.copyfile(__file__, destination)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.setdefault("custom_pipelines", {}).update(pipeline_registration())
    handle, temporary = tempfile.mkstemp(prefix=".config.", suffix=".json.tmp", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(config, stream, indent=2, sort_keys=True)
        stream.write("\n")
    os.replace(temporary, config_path)
    return destination


__all__ = ["LuCaFoundFeatureExtractionPipeline", "PIPELINE_TASK", "add_feature_extraction_pipeline", "pipeline_registration"]
