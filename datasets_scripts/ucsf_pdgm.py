"""`UcsfPdgm`: the UCSF-PDGM brain MRI glioma collection (NIfTI per sequence) with WHO grade, IDH, MGMT, 1p/19q and
survival labels; an MRI companion collection, so its preprocessing is MRI-specific (no CT lung crop)."""

import dataclasses
import logging
import re

import datasets
import numpy as np

from .common import (
    CTVolumeBuilder,
    DatasetLayoutError,
    DatasetValueError,
    DuplicateDetector,
    LuCaFoundBuilderConfig,
    SkipCounter,
    is_missing,
    is_preprocessed_config,
    normalise_text,
    parse_float,
    parse_int,
    patient_level_split,
    read_csv_table,
    require_data_dir,
    split_generators_for,
    structured_report_text,
    validated_config,
)


logger = logging.getLogger(__name__)

METADATA_PATTERN = "UCSF-PDGM-metadata_v*.csv"
REQUIRED_COLUMNS = ("ID", "Sex", "Age at MRI", "WHO CNS Grade", "MGMT status", "IDH", "1-dead 0-alive", "OS")
# Never read as a feature: the WHO 2021 diagnosis names the IDH status (and so leaks the label).
DIAGNOSIS_COLUMN = "Final pathologic diagnosis (WHO 2021)"
GRADE_CLASSES = ("2", "3", "4")
IDH_CLASSES = ("wildtype", "mutant")
MGMT_CLASSES = ("negative", "positive", "indeterminate")
CODELETION_CLASSES = ("intact", "co-deletion", "relative co-deletion")
SEX_CLASSES = ("F", "M")
DEFAULT_SEQUENCES = ("T1", "T1c", "T2", "FLAIR")
UNKNOWN_WORDS = ("unknown", "not available", "n/a")

_DESCRIPTION = """UCSF-PDGM: preoperative brain MRI of 501 adult diffuse gliomas (NIfTI, skull-stripped and
co-registered sequences, tumour segmentations) with WHO CNS grade, IDH, MGMT, 1p/19q and overall survival."""


@dataclasses.dataclass
class UcsfPdgmConfig(LuCaFoundBuilderConfig):
    """`sequences`: the MRI sequences (file suffixes) kept as channels; `crop_mode` is unused (MRI)."""

    sequences: tuple = DEFAULT_SEQUENCES
    crop_mode: str = "brain"

    def __post_init__(self):
        super().__post_init__()
        self.sequences = tuple(self.sequences)


class UcsfPdgm(CTVolumeBuilder):
    """One example per row of the metadata table (follow-up rows `_FU` kept, grouped with their patient).

    Strict: the metadata header (ID, Sex, Age at MRI, WHO CNS Grade, MGMT status, IDH, 1-dead 0-alive, OS required);
    CSV ids with 3 digits (`UCSF-PDGM-004`) are matched to 4-digit folders (`UCSF-PDGM-0004_nifti/`); grade 2/3/4;
    IDH `wildtype` or any mutation (`mutated (NOS)`, `IDH1 p.R132H`, ...); MGMT positive/negative/indeterminate
    (`unknown`/blank -> missing, -1); unrecognised IDH/MGMT/grade values raise rather than guess. The diagnosis text
    is never read.
    Tolerant (UNCONFIRMED): the package folder name (`PKG - UCSF-PDGM-v3-20230111/UCSF-PDGM-v3/`, v5...) is found by
    searching for `*_nifti` folders; the newest `UCSF-PDGM-metadata_v*.csv` is used; follow-up folders are taken to
    be `UCSF-PDGM-NNNN_FU_nifti`; 1p/19q spellings beyond intact / co-deletion / relative co-deletion are logged
    and stored as missing. A session without one of the `sequences` is skipped, logged and counted.
    `preprocessed`: the brain (from `brain_segmentation`, else non-zero voxels) is cropped, each sequence scaled to
    [0, 1] between its 0.5th and 99.5th brain percentiles and resized to `image_size` -> `pixel_values` (C, D, H, W).
    """

    BUILDER_CONFIG_CLASS = UcsfPdgmConfig
    BUILDER_CONFIGS = [
        UcsfPdgmConfig(name="raw", description="NIfTI sequences and segmentations with labels."),
        UcsfPdgmConfig(name="preprocessed", description="Brain-cropped, normalised sequences (float16) with labels."),
    ]
    DEFAULT_CONFIG_NAME = "raw"

    def _info(self):
        validated_config(self.config)
        features = {
            "subject_id": datasets.Value("string"),
            "patient_id": datasets.Value("string"),
            "follow_up": datasets.Value("bool"),
            "sex": datasets.ClassLabel(names=list(SEX_CLASSES)),
            "age": datasets.Value("float32"),
            "who_grade": datasets.ClassLabel(names=list(GRADE_CLASSES)),
            "idh": datasets.ClassLabel(names=list(IDH_CLASSES)),
            "mgmt": datasets.ClassLabel(names=list(MGMT_CLASSES)),
            "mgmt_index": datasets.Value("int32"),
            "codeletion_1p19q": datasets.ClassLabel(names=list(CODELETION_CLASSES)),
            "survival_days": datasets.Value("int32"),
            "event": datasets.Value("int8"),
            "extent_of_resection": datasets.Value("string"),
        }
        if self.config.clinical_text:
            features["text"] = datasets.Value("string")
        if is_preprocessed_config(self.config):
            size = (len(self.config.sequences), *self.config.image_size)
            features["pixel_values"] = datasets.Array4D(shape=size, dtype="float16")
            features["crop_bbox"] = datasets.Array2D(shape=(3, 2), dtype="int32")
            features["spacing"] = datasets.List(datasets.Value("float32"), length=3)
        else:
            for sequence in self.config.sequences:
                features[sequence] = datasets.Nifti()
            features["brain_segmentation"] = datasets.Nifti()
            features["tumor_segmentation"] = datasets.Nifti()
        return datasets.DatasetInfo(description=_DESCRIPTION, features=datasets.Features(features), license="cc-by-4.0")

    def _split_generators(self, dl_manager):
        root = require_data_dir(self.config, "UcsfPdgm")
        tables = sorted(root.rglob(METADATA_PATTERN), key=lambda path: int(re.search(r"_v(\d+)", path.name).group(1)))
        if not tables:
            raise DatasetLayoutError(f"no {METADATA_PATTERN} under {root}: it comes with the TCIA UCSF-PDGM download")
        rows = read_csv_table(tables[-1], REQUIRED_COLUMNS)
        for row in rows:
            row["subject_id"], row["patient_id"], row["follow_up"] = normalise_subject_id(row["ID"])
            row["labels"] = _labels(row)  # parsed up front: a bad value stops the build before anything is written
        self._rows = rows
        self._folders = {
            path.name.removesuffix("_nifti"): path for path in root.rglob("UCSF-PDGM-*_nifti") if path.is_dir()
        }
        if not self._folders:
            raise DatasetLayoutError(f"no UCSF-PDGM-NNNN_nifti folders under {root}")
        assignment = patient_level_split(
            [row["patient_id"] for row in rows],
            seed=self.config.seed,
            validation_fraction=self.config.validation_fraction,
            test_fraction=self.config.test_fraction,
        )
        return split_generators_for(assignment)

    def _generate_examples(self, patients):
        wanted = set(patients)
        skips, duplicates = SkipCounter("UcsfPdgm"), DuplicateDetector("UcsfPdgm")
        for row in self._rows:
            if row["patient_id"] not in wanted:
                continue
            subject = row["subject_id"]
            folder = self._folders.get(subject)
            if folder is None:
                skips.skip(subject, f"listed in the metadata table but no {subject}_nifti folder was found")
                continue
            paths = {
                suffix: folder / f"{subject}_{suffix}.nii.gz"
                for suffix in (*self.config.sequences, "brain_segmentation", "tumor_segmentation")
            }
            missing = [suffix for suffix in self.config.sequences if not paths[suffix].is_file()]
            if missing:
                skips.skip(subject, f"sequence file(s) {missing} missing from {folder.name}")
                continue
            example = dict(row["labels"])
            if self.config.clinical_text:
                example["text"] = structured_report_text(
                    {
                        "sex": {0: "female", 1: "male"}.get(example["sex"]),
                        "age": example["age"],
                        "extent of resection": example["extent_of_resection"],
                    }
                )
            if is_preprocessed_config(self.config):
                try:
                    example.update(preprocess_mri(paths, self.config))
                except DatasetLayoutError as error:
                    skips.skip(subject, str(error))
                    continue
                duplicates.check(subject, voxels=example["pixel_values"])
            else:
                for suffix, path in paths.items():
                    example[suffix] = str(path) if path.is_file() else None
            yield subject, example
        skips.log_summary()


def normalise_subject_id(raw_id):
    """`UCSF-PDGM-004` / `UCSF-PDGM-0004_FU` -> (`UCSF-PDGM-0004[_FU]`, patient `UCSF-PDGM-0004`, follow-up flag)."""
    text = normalise_text(raw_id)
    match = re.fullmatch(r"UCSF-PDGM-(\d{3,4})(?:_(FU\d*))?", text, flags=re.IGNORECASE)
    if match is None:
        raise DatasetValueError(f"ID {raw_id!r} is not UCSF-PDGM-NNN or UCSF-PDGM-NNNN (optionally _FU)")
    patient = f"UCSF-PDGM-{int(match.group(1)):04d}"
    follow_up = match.group(2)
    return (f"{patient}_{follow_up.upper()}" if follow_up else patient), patient, bool(follow_up)


def _is_unknown(value):
    return is_missing(value) or normalise_text(value).lower() in UNKNOWN_WORDS


def _idh(value):
    if _is_unknown(value):
        return -1
    text = normalise_text(value).lower()
    if text in ("wildtype", "wild type", "wild-type", "negative"):
        return IDH_CLASSES.index("wildtype")
    if "mut" in text or re.match(r"idh[12]\b", text):
        return IDH_CLASSES.index("mutant")
    raise DatasetValueError(f"IDH value {value!r} is neither wildtype nor a mutation")


def _mgmt(value):
    if _is_unknown(value):
        return -1
    text = normalise_text(value).lower()
    if text not in MGMT_CLASSES:
        raise DatasetValueError(f"MGMT status {value!r} is not one of {MGMT_CLASSES} or unknown")
    return MGMT_CLASSES.index(text)


def _codeletion(value, subject):
    if _is_unknown(value):
        return -1
    text = normalise_text(value).lower().replace("codeletion", "co-deletion")
    if text in CODELETION_CLASSES:
        return CODELETION_CLASSES.index(text)
    logger.warning("UcsfPdgm: %s has the 1p/19q value %r, stored as missing", subject, value)
    return -1


def _labels(row):
    subject = row["subject_id"]
    grade = parse_int(row["WHO CNS Grade"], "WHO CNS Grade")
    if grade is not None and str(grade) not in GRADE_CLASSES:
        raise DatasetValueError(f"{subject}: WHO CNS Grade must be 2, 3 or 4, got {row['WHO CNS Grade']!r}")
    event = parse_int(row["1-dead 0-alive"], "1-dead 0-alive")
    if event not in (None, 0, 1):
        raise DatasetValueError(f"{subject}: 1-dead 0-alive must be 0 or 1, got {row['1-dead 0-alive']!r}")
    survival = parse_float(row["OS"], "OS", extra_missing=UNKNOWN_WORDS)
    sex = normalise_text(row["Sex"]).upper()
    mgmt_index = row.get("MGMT index", "")
    return {
        "subject_id": subject,
        "patient_id": row["patient_id"],
        "follow_up": row["follow_up"],
        "sex": SEX_CLASSES.index(sex) if sex in SEX_CLASSES else -1,
        "age": parse_float(row["Age at MRI"], "Age at MRI"),
        "who_grade": -1 if grade is None else GRADE_CLASSES.index(str(grade)),
        "idh": _idh(row["IDH"]),
        "mgmt": _mgmt(row["MGMT status"]),
        "mgmt_index": parse_int(mgmt_index, "MGMT index", extra_missing=UNKNOWN_WORDS),
        "codeletion_1p19q": _codeletion(row.get("1p/19q", ""), subject),
        "survival_days": None if survival is None else int(round(survival)),
        "event": event,
        "extent_of_resection": None if is_missing(row.get("EOR", "")) else normalise_text(row["EOR"]),
    }


def _read_lps(path):
    """A NIfTI as a float32 (z, y, x) LPS array with its spacing."""
    import SimpleITK

    try:
        image = SimpleITK.DICOMOrient(SimpleITK.ReadImage(str(path)), "LPS")
    except RuntimeError as error:
        raise DatasetLayoutError(f"unreadable NIfTI {path.name}: {str(error).strip().splitlines()[-1]}") from None
    return SimpleITK.GetArrayFromImage(image).astype(np.float32), tuple(image.GetSpacing()[::-1])


def preprocess_mri(paths, config):
    """Brain crop, per-sequence percentile scaling to [0, 1] and resize to `config.image_size` (float16)."""
    from scipy import ndimage

    sequences = []
    spacing = None
    for suffix in config.sequences:
        array, spacing_of_sequence = _read_lps(paths[suffix])
        if sequences and array.shape != sequences[0].shape:
            raise DatasetLayoutError(
                f"{paths[suffix].name} has shape {array.shape}, other sequences {sequences[0].shape}"
            )
        sequences.append(array)
        spacing = spacing or spacing_of_sequence
    if paths["brain_segmentation"].is_file():
        brain = _read_lps(paths["brain_segmentation"])[0] > 0
    else:
        brain = sequences[0] != 0
    if not brain.any():
        raise DatasetLayoutError(f"{paths[config.sequences[0]].parent.name}: empty brain mask")
    bounds = [np.nonzero(brain.any(axis=tuple(other for other in range(3) if other != axis)))[0] for axis in range(3)]
    box = [[int(found[0]), int(found[-1]) + 1] for found in bounds]
    crop = tuple(slice(start, stop) for start, stop in box)
    channels = []
    for array in sequences:
        values = array[brain]
        low, high = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
        scaled = np.clip((array[crop] - low) / max(high - low, 1e-6), 0, 1) * brain[crop]
        factors = [target / size for target, size in zip(config.image_size, scaled.shape)]
        channels.append(ndimage.zoom(scaled, factors, order=1, grid_mode=True, mode="nearest"))
    return {
        "pixel_values": np.stack(channels).astype(np.float16),
        "crop_bbox": np.asarray(box, dtype=np.int32),
        "spacing": [float(value) for value in spacing],
    }
