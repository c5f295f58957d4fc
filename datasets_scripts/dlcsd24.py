"""`Dlcsd24`: the Duke Lung Cancer Screening Dataset 2024 (Zenodo 10782891) read from its NIfTI download, with
nodule centres converted from world mm to voxels and malignancy labels."""

import dataclasses
import json
import logging

import datasets

from .common import (
    CTVolumeBuilder,
    ct_image_features,
    DatasetLayoutError,
    DatasetValueError,
    DuplicateDetector,
    LuCaFoundBuilderConfig,
    SkipCounter,
    is_missing,
    is_preprocessed_config,
    normalise_text,
    official_split_per_patient,
    parse_float,
    parse_int,
    patient_level_split,
    preprocess_for_dataset,
    read_csv_table,
    require_data_dir,
    split_generators_for,
    structured_report_text,
    validated_config,
    world_to_voxel,
)


logger = logging.getLogger(__name__)

ANNOTATIONS_FILE = "DLCSD24_Annotations.csv"
METADATA_FILE_PATTERN = "DLCSD24_metadata*.csv"
ANNOTATION_COLUMNS = [
    "patient-id",
    "nodule_id",
    "ct_nifti_file",
    "coordX",
    "coordY",
    "coordZ",
    "w",
    "h",
    "d",
    "Malignant_lbl",
]
MALIGNANCY_CLASSES = ("benign", "malignant")
# benchmark_split tokens are UNCONFIRMED: accept the usual spellings.
BENCHMARK_SPLIT_TOKENS = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
    "holdout": "test",
}

_DESCRIPTION = """Duke Lung Cancer Screening Dataset 2024: low-dose chest CT volumes (NIfTI) with 2487 annotated nodules
(centre in world mm, box size in mm, benign/malignant)."""


@dataclasses.dataclass
class Dlcsd24Config(LuCaFoundBuilderConfig):
    """DLCSD24 options: the shared LuCaFound fields."""


class Dlcsd24(CTVolumeBuilder):
    """One example per CT volume with all its nodules.

    Strict: `DLCSD24_Annotations.csv` with the columns `patient-id, nodule_id, ct_nifti_file, coordX, coordY,
    coordZ, w, h, d, Malignant_lbl`; coordinates are world mm (ITK/LPS) and are converted to (z, y, x) voxel indices
    of the LPS-oriented volume; `Malignant_lbl` must be 0 or 1.
    Tolerant (UNCONFIRMED in the real layout): the NIfTI files are found by name anywhere below `data_dir` (the
    subset folder names are not confirmed); extra annotation columns are ignored; `benchmark_split` is optional
    and its tokens are matched loosely (train/val/valid/validation/test...; other tokens are logged and those
    patients split randomly); `DLCSD24_metadata*.csv` is optional and its columns are kept as JSON text.
    A volume listed but absent, unreadable, or with a nodule centre outside it is skipped, logged and counted.
    `clinical_text=True` adds a `text` column built from the metadata fields and the nodule sizes.
    """

    BUILDER_CONFIG_CLASS = Dlcsd24Config
    BUILDER_CONFIGS = [
        Dlcsd24Config(name="raw", description="NIfTI volumes with geometry and nodule annotations."),
        Dlcsd24Config(name="preprocessed", description="LuCaFoundImageProcessor output (float16) with nodules."),
    ]
    DEFAULT_CONFIG_NAME = "raw"

    def _info(self):
        validated_config(self.config)
        nodule = {
            "nodule_id": datasets.Value("string"),
            "center_world": datasets.List(datasets.Value("float64"), length=3),
            "center_voxel": datasets.List(datasets.Value("float32"), length=3),
            "size_mm": datasets.List(datasets.Value("float32"), length=3),
            "malignancy": datasets.ClassLabel(names=list(MALIGNANCY_CLASSES)),
        }
        features = {
            "patient_id": datasets.Value("string"),
            "ct_nifti_file": datasets.Value("string"),
            "malignancy": datasets.ClassLabel(names=list(MALIGNANCY_CLASSES)),
            "nodules": datasets.List(nodule),
            "metadata": datasets.Value("string"),
        }
        if self.config.clinical_text:
            features["text"] = datasets.Value("string")
        features.update(ct_image_features(self.config))
        return datasets.DatasetInfo(description=_DESCRIPTION, features=datasets.Features(features))

    def _split_generators(self, dl_manager):
        root = require_data_dir(self.config, "Dlcsd24")
        rows = read_csv_table(_find_table(root, ANNOTATIONS_FILE), ANNOTATION_COLUMNS)
        for row in rows:
            row["patient-id"] = normalise_text(row["patient-id"])
        official = {}
        if rows and "benchmark_split" in rows[0]:
            official = official_split_per_patient(rows, "patient-id", _benchmark_split, ANNOTATIONS_FILE)
        assignment = patient_level_split(
            [row["patient-id"] for row in rows],
            seed=self.config.seed,
            validation_fraction=self.config.validation_fraction,
            test_fraction=self.config.test_fraction,
            official_splits=official,
        )
        self._rows = rows
        self._root = root
        return split_generators_for(assignment)

    def _generate_examples(self, patients):
        from modeling_lucafound.ct_io import read_ct
        from modeling_lucafound.errors import LuCaFoundInputError

        root = self._root
        files = _index_nifti_files(root)
        metadata = _read_metadata(root)
        wanted = set(patients)
        volumes = {}
        for row in self._rows:
            if row["patient-id"] in wanted:
                volumes.setdefault((row["patient-id"], normalise_text(row["ct_nifti_file"])), []).append(row)
        skips, duplicates = SkipCounter("Dlcsd24"), DuplicateDetector("Dlcsd24")
        for (patient_id, file_name), nodule_rows in sorted(volumes.items()):
            key = f"{patient_id}/{file_name}"
            path = files.get(file_name)
            if path is None:
                skips.skip(key, f"{file_name} is listed in {ANNOTATIONS_FILE} but absent under {root}")
                continue
            try:
                volume = read_ct(path)
            except LuCaFoundInputError as error:
                skips.skip(key, f"unreadable volume: {error}")
                continue
            try:
                nodules = [_nodule(row, volume) for row in nodule_rows]
            except DatasetValueError as error:
                skips.skip(key, str(error))
                continue
            duplicates.check(key, voxels=volume.array)
            example = {
                "patient_id": patient_id,
                "ct_nifti_file": file_name,
                "malignancy": int(any(nodule["malignancy"] for nodule in nodules)),
                "nodules": nodules,
                "metadata": json.dumps(metadata.get(patient_id, {})),
            }
            if self.config.clinical_text:
                example["text"] = _clinical_text(metadata.get(patient_id, {}), nodules)
            if is_preprocessed_config(self.config):
                try:
                    example.update(preprocess_for_dataset(volume, self.config))
                except LuCaFoundInputError as error:
                    skips.skip(key, f"preprocessing failed: {error}")
                    continue
            else:
                example.update(
                    {
                        "image": str(path),
                        "shape": list(volume.array.shape),
                        "spacing": list(volume.spacing),
                        "origin": list(volume.origin),
                        "direction": [float(value) for row in volume.direction for value in row],
                    }
                )
            yield key, example
        skips.log_summary()


def _find_table(root, file_name):
    """The annotation table at the root, or one folder down (its exact place is UNCONFIRMED)."""
    for candidate in [root / file_name, *sorted(root.glob(f"*/{file_name}"))]:
        if candidate.is_file():
            return candidate
    raise DatasetLayoutError(f"{file_name} not found in {root} or its sub-folders: download it from Zenodo 10782891")


def _index_nifti_files(root):
    """NIfTI files below `root` by file name (subset folder names are UNCONFIRMED)."""
    files = {}
    for path in sorted(root.rglob("*.nii*")):
        if path.name.endswith((".nii", ".nii.gz")):
            previous = files.setdefault(path.name, path)
            if previous != path:
                logger.warning("Dlcsd24: %s found twice (%s and %s); using the first", path.name, previous, path)
    return files


def _read_metadata(root):
    """Rows of the optional metadata table keyed by patient id (columns UNCONFIRMED)."""
    tables = sorted(root.glob(METADATA_FILE_PATTERN)) + sorted(root.glob(f"*/{METADATA_FILE_PATTERN}"))
    if not tables:
        return {}
    rows = read_csv_table(tables[-1], [])
    id_column = next(
        (name for name in ("patient-id", "PatientID", "patient_id", "Patient ID") if rows and name in rows[0]), None
    )
    if id_column is None:
        logger.warning("Dlcsd24: %s has no patient-id column; its fields are not attached", tables[-1].name)
        return {}
    return {
        row[id_column]: {name: value for name, value in row.items() if name != id_column and not is_missing(value)}
        for row in rows
    }


def _benchmark_split(row):
    token = row.get("benchmark_split")
    if is_missing(token):
        return None
    split = BENCHMARK_SPLIT_TOKENS.get(normalise_text(token).lower())
    if split is None:
        logger.warning(
            "Dlcsd24: unknown benchmark_split %r for %s; that patient is split randomly", token, row["patient-id"]
        )
    return split


def _nodule(row, volume):
    """One annotation row as a nodule dict with its voxel centre; a centre outside the volume is an error."""
    column_values = {name: parse_float(row[name], name) for name in ("coordX", "coordY", "coordZ", "w", "h", "d")}
    if any(value is None for value in column_values.values()):
        raise DatasetValueError(f"nodule {row['nodule_id']}: a coordinate or size is blank")
    malignancy = parse_int(row["Malignant_lbl"], "Malignant_lbl")
    if malignancy not in (0, 1):
        raise DatasetValueError(
            f"nodule {row['nodule_id']}: Malignant_lbl must be 0 or 1, got {row['Malignant_lbl']!r}"
        )
    world = (column_values["coordX"], column_values["coordY"], column_values["coordZ"])
    voxel = world_to_voxel(world, volume.origin, volume.spacing, volume.direction)
    if not all(-0.5 <= index <= size - 0.5 for index, size in zip(voxel, volume.array.shape)):
        raise DatasetValueError(
            f"nodule {row['nodule_id']}: centre {world} mm falls outside the volume "
            f"(voxel {tuple(round(v, 1) for v in voxel)}, "
            f"shape {volume.array.shape}); the annotation and the volume do not match"
        )
    return {
        "nodule_id": row["nodule_id"],
        "center_world": list(world),
        "center_voxel": list(voxel),
        "size_mm": [column_values["w"], column_values["h"], column_values["d"]],
        "malignancy": malignancy,
    }


def _clinical_text(metadata, nodules):
    fields = dict(metadata)
    fields["number of annotated nodules"] = len(nodules)
    if nodules:
        fields["largest nodule diameter (mm)"] = round(max(max(nodule["size_mm"]) for nodule in nodules), 1)
    return structured_report_text(fields)
