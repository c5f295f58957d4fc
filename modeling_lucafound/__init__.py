"""LuCaFound: a 3D Swin CT encoder aligned with radiology reports, as a Hugging Face transformers model family.

Public names are imported lazily so that `import modeling_lucafound` stays cheap and the CLI starts fast.
"""

import importlib

__version__ = "0.1.0"

_NAME_TO_MODULE = {
    "LuCaFoundInputError": "errors",
    "CheckpointKeyMismatchError": "errors",
    "LuCaFoundVisionConfig": "configuration_lucafound",
    "LuCaFoundTextConfig": "configuration_lucafound",
    "LuCaFoundConfig": "configuration_lucafound",
    "LuCaFoundPreTrainedModel": "modeling_lucafound",
    "LuCaFoundVisionModel": "modeling_lucafound",
    "LuCaFoundTextModel": "modeling_lucafound",
    "LuCaFoundModel": "modeling_lucafound",
    "LuCaFoundForCTClassification": "modeling_lucafound",
    "LuCaFoundForSurvival": "modeling_lucafound",
    "LuCaFoundOutput": "modeling_lucafound",
    "LuCaFoundSurvivalOutput": "modeling_lucafound",
    "LuCaFoundImageProcessor": "image_processing_lucafound",
    "LuCaFoundProcessor": "processing_lucafound",
    "convert_torchvision_checkpoint": "conversion",
    "load_torchvision_state_dict": "conversion",
}

__all__ = sorted(_NAME_TO_MODULE) + ["__version__"]


def __getattr__(name):
    if name in _NAME_TO_MODULE:
        module = importlib.import_module(f".{_NAME_TO_MODULE[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
