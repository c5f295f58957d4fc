"""LuCaFound dataset builders: one `datasets.GeneratorBasedBuilder` per public collection plus a synthetic cohort.

Builder classes are imported lazily by name, so `import datasets_scripts` stays cheap; `DATASET_BUILDERS`
maps the short names used on command lines to class names and `get_builder_class` resolves them.
"""

import importlib

from modeling_lucafound.errors import LuCaFoundInputError


# class name -> module under datasets_scripts
_BUILDER_MODULES = {
    "Luna16": "luna16",
    "NsclcRadiomics": "nsclc_radiomics",
    "NsclcRadiogenomics": "nsclc_radiogenomics",
    "LungPetCtDx": "lung_pet_ct_dx",
    "Dlcsd24": "dlcsd24",
    "DeepLesion": "deeplesion",
    "UcsfPdgm": "ucsf_pdgm",
    "CtRate": "ct_rate",
    "SyntheticLungCT": "synthetic_lung_ct",
}

# short command-line name -> class name
DATASET_BUILDERS = {
    "synthetic": "SyntheticLungCT",
    "luna16": "Luna16",
    "nsclc-radiomics": "NsclcRadiomics",
    "nsclc-radiogenomics": "NsclcRadiogenomics",
    "lung-pet-ct-dx": "LungPetCtDx",
    "dlcsd24": "Dlcsd24",
    "deeplesion": "DeepLesion",
    "ucsf-pdgm": "UcsfPdgm",
    "ct-rate": "CtRate",
}


class UnknownDatasetError(LuCaFoundInputError):
    """A dataset name that no builder answers to."""


def get_builder_class(name):
    """The builder class for a short name (`luna16`) or a class name (`Luna16`)."""
    class_name = DATASET_BUILDERS.get(name, name)
    if class_name not in _BUILDER_MODULES:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; choose one of {sorted(DATASET_BUILDERS)} (or a class name: "
            f"{sorted(_BUILDER_MODULES)})"
        )
    module = importlib.import_module(f".{_BUILDER_MODULES[class_name]}", __name__)
    return getattr(module, class_name)


__all__ = sorted(_BUILDER_MODULES) + ["DATASET_BUILDERS", "UnknownDatasetError", "get_builder_class"]


def __getattr__(name):
    if name in _BUILDER_MODULES:
        return get_builder_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
