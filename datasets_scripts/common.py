"""Shared machinery for the LuCaFound dataset builders: config fields, patient-level splits, CSV reading,
messy-value parsing, skip accounting, duplicate detection and the preprocessed-image columns."""

import csv
import dataclasses
import functools
import hashlib
import logging
import math
import unicodedata
from collections import Counter
from pathlib import Path

import datasets
import numpy as np

from modeling_lucafound.atomic_files import write_bytes_atomically  # noqa: F401  (re-exported for the builders)
from modeling_lucafound.errors import LuCaFoundInputError


logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")

# Strings that collections use for "no value"; compared after stripping and lower-casing.
MISSING_VALUE_STRINGS = frozenset(
    {"", "na", "n/a", "nan", "none", "null", "not collected", "not given", "not given.", "-", "--"}
)


class DatasetLayoutError(LuCaFoundInputError):
    """A collection's folder does not look like the official download (missing file, column or folder)."""


class DatasetValueError(LuCaFoundInputError):
    """A value in a collection's table cannot be read as what its column should hold."""


@dataclasses.dataclass
class LuCaFoundBuilderConfig(datasets.BuilderConfig):
    """Config fields shared by every LuCaFound builder.

    `image_size` is the (depth, height, width) of `pixel_values` in the `preprocessed` config; tests use tiny
    sizes. `clinical_text=True` adds a structured text built from the clinical fields for collections without
    reports.
    """

    seed: int = 42
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: tuple = (48, 256, 256)
    crop_mode: str = "lung"
    clinical_text: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.image_size = tuple(int(size) for size in self.image_size)
        if len(self.image_size) != 3 or min(self.image_size) < 1:
            raise LuCaFoundInputError(
                f"image_size must be three positive sizes (depth, height, width), got {self.image_size}"
            )
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise LuCaFoundInputError(f"{name} must be in [0, 1), got {value}")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise LuCaFoundInputError(
                "validation_fraction + test_fraction must leave patients for training, got "
                f"{self.validation_fraction} + {self.test_fraction}"
            )


def validated_config(config):
    """Re-run the config checks: `datasets` sets keyword overrides after the config was constructed."""
    config.__post_init__()
    return config


def is_preprocessed_config(config):
    """True for the configs that store `pixel_values` instead of the raw volume."""
    return config.name.startswith("preprocessed")


# --------------------------------------------------------------------------------------------------------------
# Patient-level splits
# --------------------------------------------------------------------------------------------------------------


def patient_level_split(patient_ids, *, seed, validation_fraction, test_fraction, official_splits=None):
    """Assign every patient to exactly one of train/validation/test.

    Patients named in `official_splits` (patient id -> split name) keep their official split; the others are
    shuffled with `seed` and cut by the fractions, so one patient never lands on both sides.
    """
    official_splits = dict(official_splits or {})
    for patient_id, split in official_splits.items():
        if split not in SPLIT_NAMES:
            raise DatasetValueError(f"official split {split!r} of patient {patient_id!r} is not one of {SPLIT_NAMES}")
    unique_ids = sorted({str(patient_id) for patient_id in patient_ids})
    assignment = {patient_id: official_splits[patient_id] for patient_id in unique_ids if patient_id in official_splits}
    remaining = [patient_id for patient_id in unique_ids if patient_id not in assignment]
    if remaining:
        order = np.random.default_rng(seed).permutation(len(remaining))
        shuffled = [remaining[index] for index in order]
        test_count = int(round(test_fraction * len(shuffled)))
        validation_count = int(round(validation_fraction * len(shuffled)))
        if test_count + validation_count >= len(shuffled) and len(shuffled) > 0:
            # Very small cohorts: always keep at least one training patient.
            overflow = test_count + validation_count - (len(shuffled) - 1)
            test_count = max(0, test_count - overflow)
            validation_count = min(validation_count, len(shuffled) - 1 - test_count)
        for position, patient_id in enumerate(shuffled):
            if position < test_count:
                assignment[patient_id] = "test"
            elif position < test_count + validation_count:
                assignment[patient_id] = "validation"
            else:
                assignment[patient_id] = "train"
    return assignment


def official_split_per_patient(rows, patient_key, split_of_row, source_name):
    """Collect one official split per patient from per-row values; a patient with two splits is an error."""
    splits = {}
    for row in rows:
        split = split_of_row(row)
        if split is None:
            continue
        patient_id = row[patient_key]
        previous = splits.setdefault(patient_id, split)
        if previous != split:
            raise DatasetValueError(
                f"{source_name}: patient {patient_id!r} is listed in both the {previous!r} and the {split!r} "
                "official split; fix the table (one patient must stay on one side)"
            )
    return splits


def split_generators_for(assignment):
    """One `SplitGenerator` per split that has at least one patient, each carrying its patient ids."""
    generators = []
    for split in SPLIT_NAMES:
        patients = sorted(patient_id for patient_id, name in assignment.items() if name == split)
        if patients:
            generators.append(
                datasets.SplitGenerator(name=getattr(datasets.Split, split.upper()), gen_kwargs={"patients": patients})
            )
    return generators


# --------------------------------------------------------------------------------------------------------------
# Tables and messy values
# --------------------------------------------------------------------------------------------------------------


def normalise_text(value):
    """NFKC-normalise (full-width -> ASCII) and strip a cell or header; None stays None."""
    if value is None:
        return None
    return unicodedata.normalize("NFKC", str(value)).strip()


def is_missing(value, extra_missing=()):
    """True for blank, NA, NaN, 'Not Collected' and the like (case-insensitive)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    text = normalise_text(value).lower()
    return text in MISSING_VALUE_STRINGS or text in {item.lower() for item in extra_missing}


def parse_float(value, column="value", extra_missing=()):
    """A float from a cell, None when the cell is missing; unreadable text raises `DatasetValueError`."""
    if is_missing(value, extra_missing):
        return None
    try:
        number = float(normalise_text(value))
    except ValueError:
        raise DatasetValueError(f"column {column!r}: {value!r} is not a number") from None
    return None if math.isnan(number) else number


def parse_int(value, column="value", extra_missing=()):
    """An int from a cell that may be written `2` or `2.0`; None when missing; `2.5` raises."""
    number = parse_float(value, column, extra_missing)
    if number is None:
        return None
    if not float(number).is_integer():
        raise DatasetValueError(f"column {column!r}: {value!r} is not a whole number")
    return int(number)


def parse_number_list(value, expected_length=None, column="value"):
    """Numbers from a quoted vector cell such as `"0.86, 0.86, 5"` or `"[1, 0, 0]"`; None when missing."""
    if is_missing(value):
        return None
    text = normalise_text(value).strip("[]()")
    parts = [part for part in text.replace(";", ",").split(",") if part.strip()]
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise DatasetValueError(f"column {column!r}: {value!r} is not a list of numbers") from None
    if expected_length is not None and len(numbers) != expected_length:
        raise DatasetValueError(f"column {column!r}: expected {expected_length} numbers, got {value!r}")
    return numbers


def read_csv_table(path, required_columns):
    """Rows of a CSV file as dicts keyed by header names with surrounding whitespace removed.

    Raises `DatasetLayoutError` naming the file when it is missing or lacks any of `required_columns`.
    Cells are stripped; the header is NFKC-normalised so full-width letters match their ASCII names.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"{path} not found: the collection's download should contain this table")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetLayoutError(f"{path} is empty: expected a header with {list(required_columns)}") from None
        header = [normalise_text(name) for name in header]
        missing = [column for column in required_columns if column not in header]
        if missing:
            raise DatasetLayoutError(
                f"{path} lacks the column(s) {missing}; found {header}. Use the table exactly as the official "
                "download provides it."
            )
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            cells = list(cells) + [""] * (len(header) - len(cells))
            rows.append({name: cell.strip() for name, cell in zip(header, cells)})
    return rows


# --------------------------------------------------------------------------------------------------------------
# Skips and duplicates
# --------------------------------------------------------------------------------------------------------------


class SkipCounter:
    """Logs and counts examples that a builder leaves out, with the reason for each."""

    def __init__(self, dataset_name):
        self.dataset_name = dataset_name
        self.reasons = Counter()
        self.skipped = []

    def skip(self, key, reason):
        self.reasons[reason] += 1
        self.skipped.append((str(key), reason))
        logger.warning("%s: skipping %s: %s", self.dataset_name, key, reason)

    @property
    def total(self):
        return sum(self.reasons.values())

    def summary(self):
        return dict(self.reasons)

    def log_summary(self):
        if self.total:
            logger.warning("%s: skipped %d example(s): %s", self.dataset_name, self.total, self.summary())


class DuplicateDetector:
    """Reports examples that repeat an earlier one: the same series UID or byte-identical voxels."""

    def __init__(self, dataset_name):
        self.dataset_name = dataset_name
        self.first_key_of_series = {}
        self.first_key_of_voxels = {}
        self.duplicates = []

    def check(self, key, series_uid=None, voxels=None):
        """Return the key of the earlier example that `key` duplicates (logged), or None."""
        original = None
        if series_uid:
            original = self.first_key_of_series.setdefault(series_uid, key)
        if voxels is not None:
            digest = hashlib.sha1(np.ascontiguousarray(voxels).tobytes()).hexdigest() + str(np.shape(voxels))
            voxel_original = self.first_key_of_voxels.setdefault(digest, key)
            if original in (None, key):
                original = voxel_original
        if original is None or original == key:
            return None
        self.duplicates.append((key, original))
        logger.warning("%s: %s duplicates %s (same series UID or identical voxels)", self.dataset_name, key, original)
        return original


# --------------------------------------------------------------------------------------------------------------
# Builder base
# --------------------------------------------------------------------------------------------------------------

# Arrow stores one written batch of a column in at most 2 GiB, and datasets writes 1000 rows per batch unless told
# otherwise: 1000 preprocessed volumes of the default 48 x 256 x 256 float16 size are 6 GiB, and one raw chest CT
# can be 150 MiB. Batches aim at this many bytes instead.
WRITER_BATCH_BYTES = 512 * 2**20
RAW_VOLUME_WRITER_BATCH_SIZE = 4  # raw volumes have no fixed size; 4 clinical CTs stay far below 2 GiB


FIXED_SHAPE_ARRAY_FEATURES = (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)


def fixed_shape_row_bytes(features):
    """Bytes that a row's fixed-shape arrays (pixel values, crop box) take, read from the features themselves."""
    return sum(
        math.prod(feature.shape) * np.dtype(feature.dtype).itemsize
        for feature in features.values()
        if isinstance(feature, FIXED_SHAPE_ARRAY_FEATURES)
    )


def volume_writer_batch_size(config, features):
    """Rows per written Arrow batch for a builder config, so that a batch of volumes stays below Arrow's 2 GiB."""
    if not is_preprocessed_config(config):
        return RAW_VOLUME_WRITER_BATCH_SIZE
    row_bytes = max(1, fixed_shape_row_bytes(features))
    return max(1, min(datasets.config.DEFAULT_MAX_BATCH_SIZE, WRITER_BATCH_BYTES // row_bytes))


class CTVolumeBuilder(datasets.GeneratorBasedBuilder):
    """Base of every LuCaFound builder: a `GeneratorBasedBuilder` whose rows are whole CT volumes.

    Two things differ from datasets' defaults: the write batch (see `volume_writer_batch_size`; an explicit
    `writer_batch_size=` argument still wins), and a build in several processes (`num_proc`) runs torch with one
    intra-op thread while it forks its workers.
    """

    def __init__(self, *args, writer_batch_size=None, **kwargs):
        super().__init__(*args, writer_batch_size=writer_batch_size, **kwargs)
        if writer_batch_size is None:
            self._writer_batch_size = volume_writer_batch_size(self.config, self.info.features)

    def download_and_prepare(self, *args, num_proc=None, **kwargs):
        if not num_proc or num_proc <= 1:
            return super().download_and_prepare(*args, **kwargs)
        import torch

        # The workers are forked; a child that enters the parent's already started OpenMP pool (preprocessing uses
        # torch) hangs. With one intra-op thread torch runs inline in each child (the N processes share the cores).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return super().download_and_prepare(*args, num_proc=num_proc, **kwargs)
        finally:
            torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------------
# Features and preprocessing
# --------------------------------------------------------------------------------------------------------------


def preprocessed_image_features(image_size):
    """Columns of a preprocessed volume: float16 pixel values, crop box in source voxels, source spacing."""
    return {
        "pixel_values": datasets.Array3D(shape=tuple(int(size) for size in image_size), dtype="float16"),
        "crop_bbox": datasets.Array2D(shape=(3, 2), dtype="int32"),
        "spacing": datasets.List(datasets.Value("float32"), length=3),
    }


def volume_geometry_features():
    """Columns describing a raw volume's grid: shape and spacing (z, y, x), origin (x, y, z) LPS mm, direction."""
    return {
        "shape": datasets.List(datasets.Value("int32"), length=3),
        "spacing": datasets.List(datasets.Value("float32"), length=3),
        "origin": datasets.List(datasets.Value("float64"), length=3),
        "direction": datasets.List(datasets.Value("float64"), length=9),
    }


def ct_image_features(config, raw_only=None):
    """The image columns of a CT builder for its config.

    `preprocessed`: pixel values and crop box. `raw`: the volume as `Nifti`, then `raw_only` (masks or values that only
    make sense next to the raw volume), then its geometry.
    """
    if is_preprocessed_config(config):
        return preprocessed_image_features(config.image_size)
    return {"image": datasets.Nifti(), **(raw_only or {}), **volume_geometry_features()}


@functools.lru_cache(maxsize=8)
def _image_processor(image_size, crop_mode):
    from modeling_lucafound.image_processing_lucafound import LuCaFoundImageProcessor

    return LuCaFoundImageProcessor(output_size=tuple(image_size), crop_mode=crop_mode)


def preprocess_for_dataset(source, config, spacing=None):
    """Run `LuCaFoundImageProcessor` on one volume and return the three preprocessed columns.

    `source` is anything the processor accepts (path, SimpleITK image, numpy array with `spacing`).
    """
    processor = _image_processor(tuple(config.image_size), config.crop_mode)
    batch = processor(source, spacing=spacing, return_crop_info=True, return_tensors="np")
    pixel_values = np.asarray(batch["pixel_values"])[0, 0].astype(np.float16)
    crop_info = batch["crop_info"][0]
    return {
        "pixel_values": pixel_values,
        "crop_bbox": np.asarray(crop_info["bbox"], dtype=np.int32).reshape(3, 2),
        "spacing": [float(value) for value in crop_info["spacing"]],
    }


def world_to_voxel(world_xyz, origin_xyz, spacing_zyx, direction=None):
    """Continuous (z, y, x) voxel index of a world point (x, y, z) in mm, ITK/LPS convention.

    `direction` is the 3x3 matrix whose columns are the x, y, z index axes in world space (identity if None).
    """
    offset = np.asarray(world_xyz, dtype=np.float64) - np.asarray(origin_xyz, dtype=np.float64)
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
    index_xyz = np.linalg.solve(matrix, offset) / np.asarray(spacing_zyx, dtype=np.float64)[::-1]
    return tuple(float(value) for value in index_xyz[::-1])


def structured_report_text(fields):
    """A plain structured text from clinical fields, e.g. 'Sex: male. Age: 67. Histology: adenocarcinoma.'.

    Missing values are left out, so the text never states something the table does not.
    """
    sentences = []
    for name, value in fields.items():
        if value is None or (isinstance(value, str) and is_missing(value)):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        label = name.replace("_", " ").strip()
        sentences.append(f"{label[:1].upper()}{label[1:]}: {value}.")
    return " ".join(sentences)


def require_data_dir(config, dataset_name):
    """The builder's data folder as a Path; a clear error when it was not given or does not exist."""
    if not config.data_dir:
        raise DatasetLayoutError(f"{dataset_name} reads a local download: pass data_dir=<folder of the collection>")
    folder = Path(config.data_dir).expanduser()
    if not folder.is_dir():
        raise DatasetLayoutError(f"{dataset_name}: data_dir {folder} does not exist or is not a folder")
    return folder


def nifti_bytes_from_lps_volume(array, spacing, origin, direction=None, compress=True):
    """Serialise a (z, y, x) LPS volume as NIfTI-1 bytes (gzip-compressed by default) with the right affine.

    NIfTI stores RAS world coordinates and (x, y, z) voxel order, so the array is transposed and the first two
    world axes flipped; SimpleITK reading the result gives back the same LPS geometry.
    """
    import gzip

    import nibabel

    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
    spacing_xyz = np.asarray(spacing, dtype=np.float64)[::-1]
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = matrix * spacing_xyz[None, :]
    affine_lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    image = nibabel.Nifti1Image(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)), affine_ras)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine_ras, code=1)
    image.set_sform(affine_ras, code=1)
    data = image.to_bytes()
    return gzip.compress(data, compresslevel=1) if compress else data


def non_empty_splits(builder):
    """`builder.as_dataset()` for the splits that kept at least one example (skips can empty a split, and
    `as_dataset()` refuses empty splits)."""
    names = [name for name, info in builder.info.splits.items() if info.num_examples > 0]
    return datasets.DatasetDict({name: builder.as_dataset(split=name) for name in names})


def pixel_values_batch(dataset, rows, column="pixel_values"):
    """float16 array (B, *shape) of a preprocessed column for `rows` (a slice or a list of indices).

    Reads the Arrow buffers directly, without the per-element conversion (and float32 upcast) of the numpy/torch
    formatters: the fast path for training loops and collate functions.
    """
    shape = tuple(dataset.features[column].shape)
    array = dataset.with_format("arrow")[rows][column]
    parts = []
    for chunk in array.chunks:
        values = chunk.storage if hasattr(chunk, "storage") else chunk
        for _ in shape:
            values = values.flatten()
        parts.append(values.to_numpy(zero_copy_only=False).reshape((len(chunk), *shape)))
    if not parts:
        return np.zeros((0, *shape), dtype=np.float16)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
