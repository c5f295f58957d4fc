"""`SyntheticLungCT`: a seeded cohort of procedural chest CT phantoms with reports and labels, the embedded
default dataset for the demo, for tests and for smoke-testing training without downloading anything."""

import dataclasses
import json

import datasets
import numpy as np

from .common import (
    CTVolumeBuilder,
    ct_image_features,
    DuplicateDetector,
    LuCaFoundBuilderConfig,
    is_preprocessed_config,
    nifti_bytes_from_lps_volume,
    patient_level_split,
    preprocess_for_dataset,
    split_generators_for,
    validated_config,
)
from .phantoms import (
    EGFR_CLASSES,
    HISTOLOGY_CLASSES,
    M_STAGE_CLASSES,
    N_STAGE_CLASSES,
    OVERALL_STAGE_CLASSES,
    T_STAGE_CLASSES,
    generate_chest_phantom,
)


_DESCRIPTION = """Procedural chest CT phantoms (body, fat and muscle, lungs with vessels and airways, trachea, spine,
ribs) with lung tumours of varying size, lobe, location, margin and density, a templated radiology report that
describes each phantom, and histology / EGFR / TNM stage / survival labels drawn from distributions that depend on
the visible findings. Deterministic given `seed` and `num_samples`."""


@dataclasses.dataclass
class SyntheticLungCTConfig(LuCaFoundBuilderConfig):
    """`num_samples` patients (one phantom each) on a `phantom_shape` grid with `phantom_spacing` (z, y, x) mm."""

    num_samples: int = 64
    phantom_shape: tuple = (128, 256, 256)
    phantom_spacing: tuple = None  # None: the grid covers a life-sized chest (see `generate_chest_phantom`)

    def __post_init__(self):
        super().__post_init__()
        self.phantom_shape = tuple(int(size) for size in self.phantom_shape)
        if self.phantom_spacing is not None:
            self.phantom_spacing = tuple(float(value) for value in self.phantom_spacing)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")


def phantom_seed(cohort_seed, patient_index):
    """Seed of one patient's phantom: depends only on the cohort seed and the patient number (not on splits)."""
    return int(np.random.SeedSequence([int(cohort_seed), int(patient_index)]).generate_state(1)[0])


def synthetic_patient_id(patient_index):
    return f"SYN-{patient_index:05d}"


class SyntheticLungCT(CTVolumeBuilder):
    """Synthetic lung-cancer chest CT cohort.

    Configs: `raw` (the phantom as a NIfTI volume plus its lesion mask and geometry) and `preprocessed`
    (`LuCaFoundImageProcessor` output as float16 `pixel_values` with the crop box). Both carry the report, the
    findings (JSON) and the labels. Needs no `data_dir`.
    """

    BUILDER_CONFIG_CLASS = SyntheticLungCTConfig
    BUILDER_CONFIGS = [
        SyntheticLungCTConfig(name="raw", description="Phantom volumes as NIfTI with geometry, report and labels."),
        SyntheticLungCTConfig(name="preprocessed", description="LuCaFoundImageProcessor output (float16) with labels."),
    ]
    DEFAULT_CONFIG_NAME = "preprocessed"

    def _info(self):
        validated_config(self.config)
        features = {
            "patient_id": datasets.Value("string"),
            "report": datasets.Value("string"),
            "findings": datasets.Value("string"),
            "histology": datasets.ClassLabel(names=list(HISTOLOGY_CLASSES)),
            "egfr": datasets.ClassLabel(names=list(EGFR_CLASSES)),
            "t_stage": datasets.ClassLabel(names=list(T_STAGE_CLASSES)),
            "n_stage": datasets.ClassLabel(names=list(N_STAGE_CLASSES)),
            "m_stage": datasets.ClassLabel(names=list(M_STAGE_CLASSES)),
            "stage": datasets.ClassLabel(names=list(OVERALL_STAGE_CLASSES)),
            "survival_days": datasets.Value("int32"),
            "event": datasets.Value("int8"),
        }
        features.update(ct_image_features(self.config, {"lesion_mask": datasets.Nifti()}))
        return datasets.DatasetInfo(description=_DESCRIPTION, features=datasets.Features(features))

    def _split_generators(self, dl_manager):
        patient_ids = [synthetic_patient_id(index) for index in range(self.config.num_samples)]
        assignment = patient_level_split(
            patient_ids,
            seed=self.config.seed,
            validation_fraction=self.config.validation_fraction,
            test_fraction=self.config.test_fraction,
        )
        return split_generators_for(assignment)

    def _generate_examples(self, patients):
        duplicates = DuplicateDetector("SyntheticLungCT")
        for patient_id in patients:
            patient_index = int(patient_id.split("-")[1])
            phantom = generate_chest_phantom(
                phantom_seed(self.config.seed, patient_index),
                shape=self.config.phantom_shape,
                spacing=self.config.phantom_spacing,
            )
            duplicates.check(patient_id, voxels=phantom.hu)
            example = {
                "patient_id": patient_id,
                "report": phantom.report,
                "findings": json.dumps(phantom.findings),
                **{
                    name: phantom.labels[name]
                    for name in ("histology", "egfr", "t_stage", "n_stage", "m_stage", "stage")
                },
                "survival_days": phantom.labels["survival_days"],
                "event": phantom.labels["event"],
            }
            if is_preprocessed_config(self.config):
                example.update(preprocess_for_dataset(phantom.hu, self.config, spacing=phantom.spacing))
            else:
                example.update(
                    {
                        "image": {
                            "bytes": nifti_bytes_from_lps_volume(phantom.hu, phantom.spacing, phantom.origin),
                            "path": f"{patient_id}.nii.gz",
                        },
                        "lesion_mask": {
                            "bytes": nifti_bytes_from_lps_volume(
                                phantom.lesion_mask.astype(np.uint8), phantom.spacing, phantom.origin
                            ),
                            "path": f"{patient_id}_lesion.nii.gz",
                        },
                        "shape": list(phantom.hu.shape),
                        "spacing": list(phantom.spacing),
                        "origin": list(phantom.origin),
                        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                    }
                )
            yield patient_id, example
