"""`Luna16`: the LUNA16 nodule-detection collection (888 LIDC-IDRI scans as MetaImage) as a `datasets` builder.

Reads the folder as the official archive unpacks: `subset0/ ... subset9/` with `<seriesuid>.mhd` + `.raw`,
`annotations.csv` (`seriesuid,coordX,coordY,coordZ,diameter_mm`, world mm), optionally `candidates_V2.csv` /
`candidates.csv`, `seg-lungs-LUNA16/<seriesuid>.mhd` + `.zraw` (lung masks, 3 and 4 = the two lungs) and
`evaluationScript/annotations/{annotations_excluded.csv, seriesuids.csv}`. One example per scan.

Coordinates: the CSVs hold ITK physical (world, LPS) millimetres. Each scan is read with `read_ct`, which puts
it into the canonical LPS (z, y, x) array with identity direction, so a scan whose `TransformMatrix` flips x/y
is mirrored there and its origin moves to the other corner; nodule centres are converted with that final
geometry (`world_to_voxel`), never with the header's `Offset` alone. `center_voxel` always indexes that full
canonical array, also in the `preprocessed` config (map it into `pixel_values` with `crop_bbox`). Voxel values are
used as HU (the official statement is UNCONFIRMED).

No patient ids: the 888 scans come from 601 patients, but LUNA16 publishes only series UIDs. Splits group by
`seriesuid` (a series never lands on both sides; a repeated UID or byte-identical voxels are reported and kept
once), which cannot stop two scans of one patient from landing on different sides. To close that gap pass
`patient_id_table=<csv with columns seriesuid,patient_id>` (e.g. from the LIDC-IDRI DICOM headers) and scans are
grouped by patient; or use the official subsets as folds with `validation_subsets` / `test_subsets`.
Labels are nodule centres and diameters only (no malignancy, no histology). Licence CC BY 4.0 (LIDC-IDRI CC BY 3.0).
"""

import dataclasses
import logging
import re
from pathlib import Path

import datasets
import numpy as np

from modeling_lucafound.errors import LuCaFoundInputError

from .common import (
    CTVolumeBuilder,
    ct_image_features,
    DatasetLayoutError,
    DatasetValueError,
    DuplicateDetector,
    LuCaFoundBuilderConfig,
    SkipCounter,
    is_preprocessed_config,
    official_split_per_patient,
    parse_float,
    parse_int,
    patient_level_split,
    preprocess_for_dataset,
    read_csv_table,
    require_data_dir,
    split_generators_for,
    structured_report_text,
    world_to_voxel,
)
from .tcia import ct_volume_nifti_bytes, volume_geometry


logger = logging.getLogger(__name__)

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
CANDIDATE_CLASS_NAMES = ["not nodule", "nodule"]
_SUBSET_PATTERN = re.compile(r"^subset(\d+)$")


@dataclasses.dataclass
class Luna16Config(LuCaFoundBuilderConfig):
    """LUNA16 options: candidates, a seriesuid -> patient table for leakage-free splits, official subsets as folds.

    `validation_subsets` / `test_subsets` (e.g. `(8,)`, `(9,)`) put whole official subsets on one side; the other
    subsets are training. Without them scans are split at random by group (patient if known, else seriesuid).
    """

    include_candidates: bool = False
    patient_id_table: str | None = None
    validation_subsets: tuple = ()
    test_subsets: tuple = ()


def find_luna16_scans(data_dir):
    """`seriesuid -> (subset number, .mhd path)` for every scan under `subset*/` (nested unzip folders allowed).

    A seriesuid present twice is kept once; the repeats are returned as `(seriesuid, path, first path)`.
    """
    scans, repeats = {}, []
    subset_folders = sorted(
        path for path in Path(data_dir).iterdir() if path.is_dir() and _SUBSET_PATTERN.match(path.name)
    )
    if not subset_folders:
        raise DatasetLayoutError(
            f"no subset0/ ... subset9/ folders in {data_dir}: point data_dir at the unpacked LUNA16 folder "
            "(the one with annotations.csv)."
        )
    for folder in subset_folders:
        subset = int(_SUBSET_PATTERN.match(folder.name).group(1))
        for path in sorted(folder.rglob("*.mhd")):
            seriesuid = path.stem
            if seriesuid in scans:
                repeats.append((seriesuid, path, scans[seriesuid][1]))
                continue
            scans[seriesuid] = (subset, path)
    return scans, repeats


def read_point_table(path, columns, value_column):
    """seriesuid -> list of (world (x, y, z) mm, value) rows of an annotations/candidates CSV."""
    points = {}
    for row in read_csv_table(path, columns):
        world = [parse_float(row[name], name) for name in ("coordX", "coordY", "coordZ")]
        if any(value is None for value in world):
            raise DatasetValueError(f"{path}: a row of {row['seriesuid']} lacks a coordinate: {row}")
        points.setdefault(row["seriesuid"].strip(), []).append((world, row[value_column]))
    return points


def nodule_diameter(value):
    """`diameter_mm` of an `annotations.csv` row (None only when the cell is empty)."""
    return parse_float(value, "diameter_mm")


def excluded_finding_diameter(value):
    """Diameter of an `annotations_excluded.csv` finding; the file's negative placeholders become None (unknown)."""
    diameter = parse_float(value, "diameter_mm")
    return diameter if diameter is not None and diameter > 0 else None


def candidate_label(value):
    """`class` of a candidates CSV row: 0 -> `not nodule`, 1 -> `nodule`; anything else raises."""
    number = parse_int(value, "class")
    if number not in (0, 1):
        raise DatasetValueError(f"candidates CSV: class must be 0 or 1, got {value!r}")
    return CANDIDATE_CLASS_NAMES[number]


def read_patient_id_table(path):
    """seriesuid -> patient id from a user-supplied CSV with columns `seriesuid,patient_id`."""
    rows = read_csv_table(path, ("seriesuid", "patient_id"))
    return {row["seriesuid"].strip(): row["patient_id"].strip() for row in rows}


def read_lung_mask(path, volume):
    """The LUNA16 lung mask (`seg-lungs-LUNA16`, .zraw) in the canonical LPS array of `volume` (uint8 labels)."""
    import SimpleITK as sitk

    try:
        image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1]
        raise DatasetLayoutError(f"{path} is not a readable lung mask ({message})") from error
    mask = sitk.GetArrayFromImage(image).astype(np.uint8)
    if mask.shape != volume.array.shape or not np.allclose(image.GetOrigin(), volume.origin, atol=1e-3):
        raise DatasetLayoutError(
            f"{path}: the lung mask grid {mask.shape} does not match its scan {volume.array.shape}"
        )
    return mask


class Luna16(CTVolumeBuilder):
    """LUNA16: 888 low-dose and diagnostic chest CTs with 1186 annotated nodules (centre and diameter in mm)."""

    BUILDER_CONFIG_CLASS = Luna16Config
    BUILDER_CONFIGS = [
        Luna16Config(
            name="raw",
            description="Each scan as a NIfTI volume (HU, LPS) with geometry, nodules and lung mask.",
        ),
        Luna16Config(
            name="preprocessed",
            description="Each scan as LuCaFoundImageProcessor pixel_values (float16) with its crop box and nodules.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "raw"
    VERSION = datasets.Version("1.0.0")
    DATASET_NAME = "LUNA16"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skips = SkipCounter(self.DATASET_NAME)
        self.duplicates = DuplicateDetector(self.DATASET_NAME)

    def _info(self):
        point = {
            "center_world_mm": datasets.List(datasets.Value("float64"), length=3),
            "center_voxel": datasets.List(datasets.Value("float32"), length=3),
        }
        features = {
            "seriesuid": datasets.Value("string"),
            "patient_id": datasets.Value("string"),
            "subset": datasets.Value("int8"),
            "nodules": datasets.List({**point, "diameter_mm": datasets.Value("float32")}),
            "nodule_count": datasets.Value("int32"),
            "excluded_findings": datasets.List({**point, "diameter_mm": datasets.Value("float32")}),
        }
        if self.config.include_candidates:
            features["candidates"] = datasets.List({**point, "label": datasets.ClassLabel(names=CANDIDATE_CLASS_NAMES)})
        features.update(ct_image_features(self.config, {"lung_mask": datasets.Nifti()}))
        if self.config.clinical_text:
            features["text"] = datasets.Value("string")
        return datasets.DatasetInfo(
            description=__doc__,
            features=datasets.Features(features),
            homepage="https://luna16.grand-challenge.org/Data/",
            license="CC BY 4.0 (source LIDC-IDRI: CC BY 3.0)",
            citation=(
                "Setio AAA et al. Validation, comparison, and combination of algorithms for automatic detection of "
                "pulmonary nodules in computed tomography images: the LUNA16 challenge. Med Image Anal 42 (2017)."
            ),
        )

    def _split_generators(self, dl_manager):
        data_dir = require_data_dir(self.config, self.DATASET_NAME)
        self.data_folder = data_dir
        self.skips = SkipCounter(self.DATASET_NAME)
        self.duplicates = DuplicateDetector(self.DATASET_NAME)
        self.scans, repeats = find_luna16_scans(data_dir)
        for seriesuid, path, first in repeats:
            self.skips.skip(str(path), f"duplicate series UID {seriesuid} (already read from {first})")
            self.duplicates.duplicates.append((str(path), str(first)))
        self.annotations = read_point_table(data_dir / "annotations.csv", ANNOTATION_COLUMNS, "diameter_mm")
        excluded_csv = data_dir / "evaluationScript" / "annotations" / "annotations_excluded.csv"
        self.excluded = {}
        if excluded_csv.is_file():
            self.excluded = read_point_table(excluded_csv, ANNOTATION_COLUMNS, "diameter_mm")
        self.candidates = {}
        if self.config.include_candidates:
            names = [name for name in ("candidates_V2.csv", "candidates.csv") if (data_dir / name).is_file()]
            if not names:
                raise DatasetLayoutError(
                    f"include_candidates=True but neither candidates_V2.csv nor candidates.csv is in {data_dir}"
                )
            candidates_csv = data_dir / names[0]
            self.candidates = read_point_table(candidates_csv, CANDIDATE_COLUMNS, "class")
        self._check_listed_scans(data_dir)
        self.patient_of_series = {uid: uid for uid in self.scans}
        if self.config.patient_id_table:
            table = read_patient_id_table(Path(self.config.patient_id_table).expanduser())
            unmapped = sorted(set(self.scans) - set(table))
            if unmapped:
                raise DatasetLayoutError(
                    f"patient_id_table {self.config.patient_id_table} has no patient for {len(unmapped)} scan(s), e.g. "
                    f"{unmapped[0]}; add a row for every seriesuid so no patient can straddle two splits."
                )
            self.patient_of_series = {uid: table[uid] for uid in self.scans}
        official = None
        if self.config.validation_subsets or self.config.test_subsets:
            subset_split = {int(subset): "validation" for subset in self.config.validation_subsets}
            subset_split.update({int(subset): "test" for subset in self.config.test_subsets})
            rows = [
                {"patient": self.patient_of_series[uid], "subset": subset} for uid, (subset, _) in self.scans.items()
            ]
            official = official_split_per_patient(
                rows, "patient", lambda row: subset_split.get(row["subset"], "train"), "LUNA16 subsets"
            )
        self.patient_splits = patient_level_split(
            self.patient_of_series.values(),
            seed=self.config.seed,
            validation_fraction=self.config.validation_fraction,
            test_fraction=self.config.test_fraction,
            official_splits=official,
        )
        return split_generators_for(self.patient_splits)

    def _check_listed_scans(self, data_dir):
        """Log annotations of scans not in this download and scans missing from the official list."""
        absent = sorted(set(self.annotations) - set(self.scans))
        if absent:
            logger.info(
                "%s: annotations.csv lists %d scan(s) not present under subset*/ (partial download?)",
                self.DATASET_NAME,
                len(absent),
            )
        listed_csv = data_dir / "evaluationScript" / "annotations" / "seriesuids.csv"
        if listed_csv.is_file():
            listed = {line.strip().split(",")[0] for line in listed_csv.read_text().splitlines() if line.strip()}
            unlisted = sorted(set(self.scans) - listed)
            if unlisted:
                logger.warning(
                    "%s: %d scan(s) are not in seriesuids.csv, e.g. %s", self.DATASET_NAME, len(unlisted), unlisted[0]
                )

    def _generate_examples(self, patients):
        wanted = set(patients)
        for seriesuid in sorted(self.scans):
            patient_id = self.patient_of_series[seriesuid]
            if patient_id not in wanted:
                continue
            example = self._scan_example(seriesuid, patient_id)
            if example is not None:
                yield seriesuid, example
        self.skips.log_summary()

    def _points(self, rows, volume, value_name, parse_value):
        points = []
        for world, value in rows:
            center = world_to_voxel(world, volume.origin, volume.spacing, volume.direction)
            points.append({"center_world_mm": world, "center_voxel": list(center), value_name: parse_value(value)})
        return points

    def _scan_example(self, seriesuid, patient_id):
        subset, path = self.scans[seriesuid]
        from modeling_lucafound.ct_io import read_ct

        try:
            volume = read_ct(str(path))
        except LuCaFoundInputError as error:
            self.skips.skip(seriesuid, f"unreadable volume: {error}")
            return None
        original = self.duplicates.check(seriesuid, series_uid=seriesuid, voxels=volume.array)
        if original is not None:
            self.skips.skip(seriesuid, f"duplicate of {original} (identical voxels)")
            return None
        nodules = self._points(self.annotations.get(seriesuid, []), volume, "diameter_mm", nodule_diameter)
        shape = np.asarray(volume.array.shape)
        outside = [
            nodule
            for nodule in nodules
            if np.any(np.asarray(nodule["center_voxel"]) < -0.5)
            or np.any(np.asarray(nodule["center_voxel"]) > shape - 0.5)
        ]
        if outside:
            self.skips.skip(
                seriesuid,
                f"{len(outside)} annotated nodule centre(s) lie outside the scan (e.g. "
                f"{outside[0]['center_world_mm']} mm): annotation and image geometry disagree",
            )
            return None
        excluded = self._points(self.excluded.get(seriesuid, []), volume, "diameter_mm", excluded_finding_diameter)
        example = {
            "seriesuid": seriesuid,
            "patient_id": patient_id,
            "subset": subset,
            "nodules": nodules,
            "nodule_count": len(nodules),
            "excluded_findings": excluded,
        }
        if self.config.include_candidates:
            example["candidates"] = self._points(
                self.candidates.get(seriesuid, []), volume, "label", candidate_label
            )
        if is_preprocessed_config(self.config):
            try:
                example.update(preprocess_for_dataset(volume.array, self.config, spacing=volume.spacing))
            except LuCaFoundInputError as error:
                self.skips.skip(seriesuid, f"preprocessing failed: {error}")
                return None
        else:
            example["image"] = {"bytes": ct_volume_nifti_bytes(volume), "path": f"{seriesuid}.nii.gz"}
            mask_path = self.data_folder / "seg-lungs-LUNA16" / f"{seriesuid}.mhd"
            example["lung_mask"] = None
            if mask_path.is_file():
                try:
                    lung_mask = read_lung_mask(mask_path, volume)
                    example["lung_mask"] = {
                        "bytes": ct_volume_nifti_bytes(volume, lung_mask),
                        "path": f"{seriesuid}_lungs.nii.gz",
                    }
                except DatasetLayoutError as error:
                    logger.warning("%s: lung mask left out: %s", seriesuid, error)
            example.update(volume_geometry(volume))
        if self.config.clinical_text:
            diameters = [nodule["diameter_mm"] for nodule in nodules if nodule["diameter_mm"] is not None]
            example["text"] = structured_report_text(
                {
                    "Lung nodules (3 mm or larger)": len(nodules),
                    "Largest nodule diameter (mm)": round(max(diameters), 1) if diameters else None,
                }
            )
        return example
