"""`CtRate`: CT-RATE (chest CT volumes paired with radiology reports and 18 abnormality labels) read from a local
copy of the Hub repository `ibrahimhamamci/CT-RATE`, with HU and spacing recovered from its metadata tables."""

import dataclasses
import json
import logging
from pathlib import Path

import datasets
import numpy as np

from .common import (
    CTVolumeBuilder,
    ct_image_features,
    DatasetLayoutError,
    DuplicateDetector,
    LuCaFoundBuilderConfig,
    SkipCounter,
    is_missing,
    is_preprocessed_config,
    parse_float,
    parse_int,
    parse_number_list,
    patient_level_split,
    preprocess_for_dataset,
    read_csv_table,
    require_data_dir,
    split_generators_for,
    validated_config,
)


logger = logging.getLogger(__name__)

FINDING_COLUMNS = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
METADATA_COLUMNS = (
    "VolumeName",
    "XYSpacing",
    "ZSpacing",
    "RescaleSlope",
    "RescaleIntercept",
    "ImageOrientationPatient",
)
METADATA_KEPT = (
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesDescription",
    "ConvolutionKernel",
    "PatientSex",
    "PatientAge",
    "CTDIvol",
    "NumberofSlices",
)
# Official split folder -> (our split name, reports/metadata file prefix, labels file prefix)
OFFICIAL_SPLITS = {"train": ("train", "train", "train"), "valid": ("validation", "validation", "valid")}
KNOWN_BAD_VOLUMES = frozenset({"train_1267_a_4", "train_11755_a_3", "train_11755_a_4"})
PRESENCE_CLASSES = ("absent", "present")

_DESCRIPTION = """CT-RATE: non-contrast chest CT volumes with radiology reports (clinical information, technique,
findings, impression) and 18 model-predicted abnormality labels; cc-by-nc-sa-4.0, gated on the Hub."""


def finding_column_name(finding):
    """`Lung nodule` -> `lung_nodule`."""
    return finding.lower().replace(" ", "_")


@dataclasses.dataclass
class CtRateConfig(LuCaFoundBuilderConfig):
    """`prefer_fixed`: read `train_fixed/`/`valid_fixed/` copies when they exist (reported to be corrected)."""

    prefer_fixed: bool = True


class CtRate(CTVolumeBuilder):
    """One example per volume (`<split>_<patient>_<scan>_<reconstruction>`); patient id `<split>_<patient>`.

    `data_dir` is the folder holding `dataset/` (or `dataset/` itself). Splits are the official ones (train ->
    train, valid -> validation; CT-RATE has no public test split), so every scan and reconstruction of a patient
    stays together. Volumes listed in the reports table but not downloaded are skipped and counted (partial
    downloads are common), as are the known bad volumes and volumes without a slice spacing.

    Strict: table names and headers (reports `validation_`, labels `valid_`), the 18 label columns (0/1), spacing
    from `XYSpacing`/`ZSpacing` of the metadata (the original NIfTI headers are blank), HU = value x
    `RescaleSlope` + `RescaleIntercept` for the original volumes.
    Tolerant (UNCONFIRMED): `*_fixed` copies are said to carry geometry and HU; whether a volume already holds HU
    is detected from its air level (about -1024) rather than trusted, and a header with a real affine is used for
    orientation and spacing. The voxel order of blank-header originals is taken as (x, y, z) in LPS, as public
    loaders read them (CT-CLIP, cotomka), and volumes whose `ImageOrientationPatient` is not axial identity are
    skipped because their voxel order is unknown. The origin column of blank-header volumes is
    `ImagePositionPatient` from the metadata (which slice it belongs to is UNCONFIRMED).
    """

    BUILDER_CONFIG_CLASS = CtRateConfig
    BUILDER_CONFIGS = [
        CtRateConfig(name="raw", description="NIfTI volumes, geometry and HU rescale from metadata, reports, labels."),
        CtRateConfig(name="preprocessed", description="LuCaFoundImageProcessor output (float16), reports, labels."),
    ]
    DEFAULT_CONFIG_NAME = "preprocessed"

    def _info(self):
        validated_config(self.config)
        features = {
            "volume_name": datasets.Value("string"),
            "patient_id": datasets.Value("string"),
            "report": datasets.Value("string"),
            "clinical_information": datasets.Value("string"),
            "technique": datasets.Value("string"),
            "findings": datasets.Value("string"),
            "impressions": datasets.Value("string"),
            **{
                finding_column_name(name): datasets.ClassLabel(names=list(PRESENCE_CLASSES)) for name in FINDING_COLUMNS
            },
            "patient_sex": datasets.Value("string"),
            "patient_age": datasets.Value("int32"),
            "metadata": datasets.Value("string"),
        }
        raw_only = {
            "rescale_slope": datasets.Value("float32"),
            "rescale_intercept": datasets.Value("float32"),
            "stored_as_hounsfield": datasets.Value("bool"),
        }
        features.update(ct_image_features(self.config, raw_only))
        return datasets.DatasetInfo(
            description=_DESCRIPTION, features=datasets.Features(features), license="cc-by-nc-sa-4.0"
        )

    def _split_generators(self, dl_manager):
        root = _dataset_folder(require_data_dir(self.config, "CtRate"))
        self._tables = {}
        official = {}
        for folder, (split, table_prefix, labels_prefix) in OFFICIAL_SPLITS.items():
            reports_path = root / "radiology_text_reports" / f"{table_prefix}_reports.csv"
            if not reports_path.exists():
                continue
            reports = read_csv_table(reports_path, REPORT_COLUMNS)
            labels = read_csv_table(
                root / "multi_abnormality_labels" / f"{labels_prefix}_predicted_labels.csv",
                ("VolumeName",) + FINDING_COLUMNS,
            )
            metadata = read_csv_table(root / "metadata" / f"{table_prefix}_metadata.csv", METADATA_COLUMNS)
            for row in labels:  # checked up front: a bad label stops the build before anything is written
                _finding_labels(_volume_stem(row["VolumeName"]), row)
            self._tables[folder] = (reports, _by_volume(labels), _by_volume(metadata))
            for row in reports:
                official[patient_of(_volume_stem(row["VolumeName"]))] = split
        if not self._tables:
            raise DatasetLayoutError(
                f"no report tables under {root / 'radiology_text_reports'}: expected train_reports.csv and/or "
                "validation_reports.csv from the CT-RATE repository"
            )
        self._root = root
        assignment = patient_level_split(
            official, seed=self.config.seed, validation_fraction=0.0, test_fraction=0.0, official_splits=official
        )
        return split_generators_for(assignment)

    def _generate_examples(self, patients):
        wanted = set(patients)
        skips, duplicates = SkipCounter("CtRate"), DuplicateDetector("CtRate")
        from modeling_lucafound.errors import LuCaFoundInputError

        for folder, (reports, labels, metadata) in self._tables.items():
            for report in reports:
                name = _volume_stem(report["VolumeName"])
                if patient_of(name) not in wanted:
                    continue
                if name in KNOWN_BAD_VOLUMES:
                    skips.skip(name, "known bad volume (reported broken upstream)")
                    continue
                if name not in labels or name not in metadata:
                    skips.skip(name, "no row in the labels or metadata table")
                    continue
                path = self._volume_path(folder, name)
                if path is None:
                    skips.skip(name, "listed in the reports table but not downloaded")
                    continue
                try:
                    volume = read_ct_rate_volume(path, metadata[name])
                except LuCaFoundInputError as error:
                    skips.skip(name, str(error))
                    continue
                duplicates.check(name, voxels=volume["hu"])
                example = _text_and_labels(name, report, labels[name], metadata[name])
                if is_preprocessed_config(self.config):
                    try:
                        example.update(preprocess_for_dataset(volume["hu"], self.config, spacing=volume["spacing"]))
                    except LuCaFoundInputError as error:
                        skips.skip(name, f"preprocessing failed: {error}")
                        continue
                else:
                    example.update(
                        {
                            "image": str(path),
                            "rescale_slope": volume["slope"],
                            "rescale_intercept": volume["intercept"],
                            "stored_as_hounsfield": volume["stored_as_hounsfield"],
                            "shape": list(volume["hu"].shape),
                            "spacing": list(volume["spacing"]),
                            "origin": list(volume["origin"]),
                            "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                        }
                    )
                yield name, example
        skips.log_summary()

    def _volume_path(self, folder, name):
        split, patient, scan, _ = name.split("_")
        relative = Path(f"{split}_{patient}") / f"{split}_{patient}_{scan}" / f"{name}.nii.gz"
        candidates = [self._root / f"{folder}_fixed" / relative, self._root / folder / relative]
        if not self.config.prefer_fixed:
            candidates.reverse()
        return next((path for path in candidates if path.is_file()), None)


class CtRateVolumeError(DatasetLayoutError):
    """A CT-RATE volume that cannot be turned into HU with a known geometry."""


def _dataset_folder(data_dir):
    return data_dir / "dataset" if (data_dir / "dataset").is_dir() else data_dir


def _volume_stem(volume_name):
    return volume_name.strip().removesuffix(".gz").removesuffix(".nii")


def patient_of(volume_stem):
    """`train_12_a_1` -> `train_12`: every scan and reconstruction of one patient."""
    split, patient = volume_stem.split("_")[:2]
    return f"{split}_{patient}"


def _by_volume(rows):
    return {_volume_stem(row["VolumeName"]): row for row in rows}


def _has_real_affine(image):
    header = image.header
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        return False
    return not np.allclose(image.affine, np.eye(4))


def read_ct_rate_volume(path, metadata_row):
    """HU volume (z, y, x) LPS, spacing and origin of one CT-RATE NIfTI, using its metadata row where needed."""
    import nibabel

    try:
        image = nibabel.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for truncated or corrupt files
        raise CtRateVolumeError(f"unreadable NIfTI {path.name}: {error}") from None
    if data.ndim != 3:
        raise CtRateVolumeError(f"{path.name} is not a 3D volume (shape {data.shape})")
    slope = parse_float(metadata_row.get("RescaleSlope"), "RescaleSlope") or 1.0
    intercept = parse_float(metadata_row.get("RescaleIntercept"), "RescaleIntercept") or 0.0
    if _has_real_affine(image):
        canonical = nibabel.as_closest_canonical(image)
        data = np.asarray(canonical.dataobj)[::-1, ::-1, :]  # RAS -> LPS voxel order
        zooms = canonical.header.get_zooms()[:3]
        spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
        corner = canonical.affine @ np.array([data.shape[0] - 1, data.shape[1] - 1, 0, 1.0])
        origin = (-float(corner[0]), -float(corner[1]), float(corner[2]))
    else:
        orientation = parse_number_list(metadata_row.get("ImageOrientationPatient"), 6, "ImageOrientationPatient")
        if orientation is not None and not np.allclose(orientation, [1, 0, 0, 0, 1, 0], atol=1e-3):
            raise CtRateVolumeError(
                f"{path.name}: ImageOrientationPatient {orientation} is not axial identity; its voxel order is unknown"
            )
        xy = parse_number_list(metadata_row.get("XYSpacing"), 2, "XYSpacing")
        z_spacing = parse_float(metadata_row.get("ZSpacing"), "ZSpacing")
        if xy is None or z_spacing is None or z_spacing <= 0:
            raise CtRateVolumeError(
                f"{path.name}: the metadata has no usable XYSpacing/ZSpacing and the NIfTI header is blank"
            )
        spacing = (float(z_spacing), float(xy[1]), float(xy[0]))
        position = parse_number_list(metadata_row.get("ImagePositionPatient"), 3, "ImagePositionPatient")
        origin = tuple(position) if position is not None else (0.0, 0.0, 0.0)
    hu, stored_as_hounsfield = hounsfield_from_stored(
        data.transpose(2, 1, 0).astype(np.float32), slope, intercept, path.name
    )
    return {
        "hu": hu,
        "spacing": spacing,
        "origin": origin,
        "slope": slope,
        "intercept": intercept,
        "stored_as_hounsfield": stored_as_hounsfield,
    }


def hounsfield_from_stored(values, slope, intercept, description):
    """int16 HU from stored values: kept when the air level is already about -1024 HU, else rescaled.

    Decided from the 2nd percentile (air around and inside the chest), so neither kind of copy is trusted blindly.
    """
    air_level = float(np.percentile(values, 2))
    if -1200 <= air_level <= -850:
        hu, already = values, True
    elif -1200 <= air_level * slope + intercept <= -850:
        hu, already = values * slope + intercept, False
    else:
        raise CtRateVolumeError(
            f"{description}: cannot tell whether the values are HU (air level {air_level:.0f} stored, "
            f"{air_level * slope + intercept:.0f} after rescaling); expected about -1024"
        )
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), already


def _finding_labels(name, labels):
    values = {}
    for finding in FINDING_COLUMNS:
        value = parse_int(labels[finding], finding)
        if value not in (0, 1):
            raise DatasetLayoutError(f"{name}: label {finding!r} must be 0 or 1, got {labels[finding]!r}")
        values[finding_column_name(finding)] = value
    return values


def _text_and_labels(name, report, labels, metadata):
    clinical = report["ClinicalInformation_EN"]
    parts = []
    if not is_missing(clinical):
        parts.append(f"Clinical information: {clinical}")
    for title, column in (("Technique", "Technique_EN"), ("Findings", "Findings_EN"), ("Impression", "Impressions_EN")):
        if not is_missing(report[column]):
            parts.append(f"{title}: {report[column]}")
    example = {
        "volume_name": name,
        "patient_id": patient_of(name),
        "report": "\n".join(parts),
        "clinical_information": None if is_missing(clinical) else clinical,
        "technique": report["Technique_EN"],
        "findings": report["Findings_EN"],
        "impressions": report["Impressions_EN"],
    }
    example.update(_finding_labels(name, labels))
    age = metadata.get("PatientAge", "")
    example["patient_sex"] = None if is_missing(metadata.get("PatientSex")) else metadata["PatientSex"]
    example["patient_age"] = int(age.rstrip("Yy")) if age and age.rstrip("Yy").isdigit() else None
    example["metadata"] = json.dumps(
        {key: metadata[key] for key in METADATA_KEPT if key in metadata and not is_missing(metadata[key])}
    )
    return example
