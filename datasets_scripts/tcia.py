"""Helpers for TCIA collections as the NBIA Data Retriever writes them: manifest, series discovery, geometry.

The retriever writes `manifest-<digits>/metadata.csv` next to `<Collection>/<PatientID>/<study>/<series>/*.dcm`,
with study and series folders named either by UID (classic) or descriptively
(`MM-DD-YYYY-<StudyID>-<StudyDescription>-<5 chars>/<SeriesNumber %.6f>-<SeriesDescription>-<5 chars>`).
Series are found through `metadata.csv` when it is there and through the DICOM Modality tag otherwise. Slice
order never comes from file names (`1-001.dcm`, `000001.dcm`, ...): volumes are read with
`modeling_lucafound.ct_io.read_ct`, which sorts slices by position.
"""

import dataclasses
import logging
import re
from dataclasses import dataclass
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
    nifti_bytes_from_lps_volume,
    is_missing,
    is_preprocessed_config,
    normalise_text,
    patient_level_split,
    preprocess_for_dataset,
    read_csv_table,
    require_data_dir,
    split_generators_for,
    structured_report_text,
    world_to_voxel,
)


logger = logging.getLogger(__name__)

# Columns of the retriever's metadata.csv that the builders need (the file has more: see DATASETS.md section 0).
MANIFEST_REQUIRED_COLUMNS = ("Series UID", "Subject ID", "Study UID", "Modality", "File Location")

# Secondary capture (a picture of an image, e.g. a fused MPR): no 3D geometry, never a CT volume.
SECONDARY_CAPTURE_SOP_CLASS_UIDS = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")
# `<SeriesNumber as %.6f>-<SeriesDescription or NA>-<last 5 characters of SeriesInstanceUID>`
_DESCRIPTIVE_SERIES_PATTERN = re.compile(
    r"^(?P<series_number>-?\d+\.\d{6})-(?P<description>.*)-(?P<uid_suffix>[0-9.]{1,5})$"
)
# `MM-DD-YYYY-<StudyID or NA>-<StudyDescription or NA>-<last 5 characters of StudyInstanceUID>`
_DESCRIPTIVE_STUDY_PATTERN = re.compile(r"^(?P<date>\d{2}-\d{2}-\d{4})-(?P<rest>.*)-(?P<uid_suffix>[0-9.]{1,5})$")


class SeriesWithoutGeometryError(DatasetLayoutError):
    """A DICOM series that cannot be read as a 3D volume (secondary capture, missing position or orientation)."""


@dataclass
class TciaSeries:
    """One DICOM series of a TCIA download: where it is and what the manifest or its headers say it is."""

    series_uid: str
    subject_id: str
    study_uid: str
    modality: str
    folder: Path
    sop_class_uid: str = ""
    series_description: str = ""
    manufacturer: str = ""
    number_of_images: int | None = None


def parse_series_folder_name(name):
    """What a series folder name says: classic (`<SeriesInstanceUID>`) or descriptive (number, description, UID
    tail)."""
    if _UID_PATTERN.match(name):
        return {"naming": "classic", "series_uid": name}
    match = _DESCRIPTIVE_SERIES_PATTERN.match(name)
    if match is None:
        return None
    description = match["description"]
    return {
        "naming": "descriptive",
        "series_number": float(match["series_number"]),
        "series_description": "" if description == "NA" else description,
        "uid_suffix": match["uid_suffix"],
    }


def parse_study_folder_name(name):
    """What a study folder name says: classic (`<StudyInstanceUID>`) or descriptive (the UID tail; the date is
    dropped)."""
    if _UID_PATTERN.match(name):
        return {"naming": "classic", "study_uid": name}
    match = _DESCRIPTIVE_STUDY_PATTERN.match(name)
    if match is None:
        return None
    return {"naming": "descriptive", "uid_suffix": match["uid_suffix"]}


def folder_matches_uid(folder_name, uid):
    """Whether a (classic or descriptive) study/series folder name is consistent with a DICOM UID."""
    parsed = parse_series_folder_name(folder_name) or parse_study_folder_name(folder_name)
    if parsed is None:
        return False
    if parsed["naming"] == "classic":
        return parsed.get("series_uid", parsed.get("study_uid")) == uid
    return uid.endswith(parsed["uid_suffix"])


def find_collection_folder(data_dir, collection):
    """The collection folder under `data_dir` (the retriever's download folder, a `manifest-*` folder, or itself).

    `collection` is a folder name or a tuple of accepted spellings (e.g. `NSCLC Radiogenomics` with a space).
    """
    data_dir = Path(data_dir)
    names = (collection,) if isinstance(collection, str) else tuple(collection)
    if not data_dir.is_dir():
        raise DatasetLayoutError(
            f"data_dir {data_dir} is not a folder: point it at the folder the NBIA Data Retriever wrote."
        )
    candidates = [data_dir] if data_dir.name in names else []
    for name in names:
        candidates += [data_dir / name]
        candidates += sorted(path / name for path in data_dir.glob("manifest-*"))
        candidates += sorted(path / name for path in data_dir.glob("*/manifest-*"))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DatasetLayoutError(
        f"no {' or '.join(repr(name) for name in names)} folder found in {data_dir} (looked in it, in manifest-*/ and "
        "*/manifest-*/): point data_dir at the folder the NBIA Data Retriever wrote."
    )


def resolve_file_location(manifest_folder, file_location):
    """A metadata.csv `File Location` (`.\\NSCLC-Radiomics\\LUNG1-001\\...` on Windows, `./...` elsewhere) as a path."""
    parts = [part for part in re.split(r"[\\/]+", file_location.strip()) if part not in ("", ".")]
    return Path(manifest_folder).joinpath(*parts)


def _parse_number_of_images(value):
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _folded(name):
    """A collection name compared loosely: `NSCLC Radiogenomics` == `NSCLC-Radiogenomics`."""
    return re.sub(r"[\s_-]+", "", name).lower()


def read_manifest_metadata(metadata_csv, collection=None, skips=None):
    """Series listed in the retriever's `metadata.csv` (only `collection`'s rows if given); absent folders are skipped.

    A series whose folder is listed but absent is a per-example skip (logged and counted in `skips`, a `SkipCounter`).
    """
    metadata_csv = Path(metadata_csv)
    rows = read_csv_table(metadata_csv, MANIFEST_REQUIRED_COLUMNS)
    series = []
    for row in rows:
        if collection is not None and row.get("Collection") and _folded(row["Collection"]) != _folded(collection):
            continue
        folder = resolve_file_location(metadata_csv.parent, row["File Location"])
        series_uid = row["Series UID"].strip()
        if not folder.is_dir():
            reason = f"listed in {metadata_csv.name} but its folder {folder} is missing"
            if skips is not None:
                skips.skip(series_uid, reason)
            else:
                logger.warning("skipping series %s: %s", series_uid, reason)
            continue
        series.append(
            TciaSeries(
                series_uid=series_uid,
                subject_id=row["Subject ID"].strip(),
                study_uid=row["Study UID"].strip(),
                modality=row["Modality"].strip().upper(),
                folder=folder,
                sop_class_uid=(row.get("SOP Class UID") or "").strip(),
                series_description=(row.get("Series Description") or "").strip(),
                manufacturer=(row.get("Manufacturer") or "").strip(),
                number_of_images=_parse_number_of_images(row.get("Number of Images")),
            )
        )
    return series


def dicom_files(folder):
    """The DICOM files of a series folder, in a stable (name) order that says nothing about slice order."""
    folder = Path(folder)
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() == ".dcm")
    if files:
        return files
    # Some copies drop the extension: recognise DICOM by its `DICM` preamble marker.
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_file():
            with open(path, "rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    found.append(path)
    return found


def read_dicom_header(path):
    """The header of one DICOM file without its pixels (raises DatasetLayoutError if it is not DICOM)."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises several types for unreadable files
        raise DatasetLayoutError(f"{path} is not a readable DICOM file ({error}); re-download that series.") from error


def discover_series(collection_folder, skips=None):
    """Series under `<Collection>/<PatientID>/<study>/<series>/`, identified by the headers (Modality tag) of one
    file each."""
    collection_folder = Path(collection_folder)
    series = []
    for patient_folder in sorted(path for path in collection_folder.iterdir() if path.is_dir()):
        for study_folder in sorted(path for path in patient_folder.iterdir() if path.is_dir()):
            for series_folder in sorted(path for path in study_folder.iterdir() if path.is_dir()):
                files = dicom_files(series_folder)
                if not files:
                    continue
                try:
                    header = read_dicom_header(files[0])
                except DatasetLayoutError as error:
                    if skips is not None:
                        skips.skip(str(series_folder), str(error))
                        continue
                    raise
                series_uid = str(header.get("SeriesInstanceUID", ""))
                if series_uid and not folder_matches_uid(series_folder.name, series_uid):
                    logger.warning(
                        "series folder %s does not match its SeriesInstanceUID %s", series_folder, series_uid
                    )
                series.append(
                    TciaSeries(
                        series_uid=series_uid,
                        subject_id=str(header.get("PatientID", patient_folder.name)) or patient_folder.name,
                        study_uid=str(header.get("StudyInstanceUID", "")),
                        modality=str(header.get("Modality", "")).upper(),
                        folder=series_folder,
                        sop_class_uid=str(header.get("SOPClassUID", "")),
                        series_description=str(header.get("SeriesDescription", "")),
                        manufacturer=str(header.get("Manufacturer", "")),
                        number_of_images=len(files),
                    )
                )
    return series


def list_collection_series(data_dir, collection, skips=None, duplicates=None):
    """Every series of `collection` under `data_dir`: from `metadata.csv` if present, else from DICOM headers.

    A series UID listed twice is kept once and reported (logged, counted in `skips`, and appended to
    `duplicates.duplicates` as `(repeat folder, first folder)` when a `DuplicateDetector` is given).
    Returns `(collection_folder, series)`.
    """
    collection_folder = find_collection_folder(data_dir, collection)
    metadata_csv = collection_folder.parent / "metadata.csv"
    if metadata_csv.is_file():
        series = read_manifest_metadata(metadata_csv, collection=collection_folder.name, skips=skips)
    else:
        logger.info("no metadata.csv next to %s: finding series by their DICOM headers", collection_folder)
        series = discover_series(collection_folder, skips=skips)
    unique, seen = [], {}
    for item in series:
        if item.series_uid in seen:
            reason = f"duplicate series UID (same series as {seen[item.series_uid]})"
            if duplicates is not None:
                duplicates.duplicates.append((str(item.folder), str(seen[item.series_uid])))
            if skips is not None:
                skips.skip(str(item.folder), reason)
            else:
                logger.warning("skipping %s: %s", item.folder, reason)
            continue
        seen[item.series_uid] = item.folder
        unique.append(item)
    return collection_folder, unique


def series_geometry_problem(folder, sop_class_uid=""):
    """Why a series folder cannot be a 3D CT volume (secondary capture, no position/orientation, one slice), or None."""
    files = dicom_files(folder)
    if not files:
        return f"no DICOM files in {folder}"
    header = read_dicom_header(files[0])
    sop_class_uid = sop_class_uid or str(header.get("SOPClassUID", ""))
    if sop_class_uid in SECONDARY_CAPTURE_SOP_CLASS_UIDS:
        return f"secondary-capture series (SOP class {sop_class_uid}) without 3D geometry"
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in header:
            return f"no {keyword} in {files[0].name}: the series has no 3D geometry"
    if len(files) < 2:
        return "a single slice is not a 3D volume"
    return None


def read_dicom_dataset(path):
    """One whole DICOM file (header and pixels, e.g. a SEG or RTSTRUCT); DatasetLayoutError if it is unreadable."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path)
        if "PixelData" in dataset:
            dataset.pixel_array  # decode now, so damaged pixel data fails here with the file's name
    except Exception as error:  # pydicom raises several types for damaged files
        raise DatasetLayoutError(f"{path} is not a readable DICOM file ({error}); re-download that series.") from error
    return dataset


def read_series_volume(folder):
    """The series as a `CTVolume` (HU, LPS, (z, y, x)) via `read_ct`; unreadable input raises LuCaFoundInputError."""
    from modeling_lucafound.ct_io import read_ct

    return read_ct(str(folder))


def read_series_headers(folder):
    """Headers (no pixels) of every file of a series folder."""
    return [read_dicom_header(path) for path in dicom_files(folder)]


def dicom_pixel_to_world(header, column, row):
    """World (x, y, z) LPS mm of pixel (column, row) of one DICOM slice, from its position, orientation and spacing."""
    position = np.asarray([float(value) for value in header.ImagePositionPatient])
    orientation = np.asarray([float(value) for value in header.ImageOrientationPatient])
    row_spacing, column_spacing = (float(value) for value in header.PixelSpacing)
    return position + column * column_spacing * orientation[:3] + row * row_spacing * orientation[3:]


def volume_index_of_world(world_xyz, volume):
    """A world point (x, y, z) LPS mm as a fractional (z, y, x) index into `volume.array`."""
    return world_to_voxel(world_xyz, volume.origin, volume.spacing, volume.direction)


def dicom_box_to_volume_box(header, box, volume):
    """A pixel box (xmin, ymin, xmax, ymax) of one DICOM slice as [[z0, z1], [y0, y1], [x0, x1]] in `volume.array`.

    The corners go through the slice's own geometry into world mm and back into the canonical LPS array, so
    a series stored flipped or in another orientation still gives the right box. Bounds are inclusive voxel
    indices (rounded, clipped to the array).
    """
    xmin, ymin, xmax, ymax = (float(value) for value in box)
    corners = np.asarray(
        [volume_index_of_world(dicom_pixel_to_world(header, x, y), volume) for x in (xmin, xmax) for y in (ymin, ymax)]
    )
    shape = np.asarray(volume.array.shape)
    low = np.clip(np.rint(corners.min(axis=0)), 0, shape - 1).astype(int)
    high = np.clip(np.rint(corners.max(axis=0)), 0, shape - 1).astype(int)
    return [[int(low[axis]), int(high[axis])] for axis in range(3)]


def ct_volume_nifti_bytes(volume, array=None):
    """A `CTVolume` (or `array` on its grid, e.g. a mask) as gzipped NIfTI bytes with its true affine."""
    data = volume.array if array is None else array
    return nifti_bytes_from_lps_volume(data, volume.spacing, volume.origin, volume.direction)


def find_table(data_dir, collection_folder, patterns, description, explicit=None):
    """A clinical table given explicitly or found by name patterns in `data_dir`, the manifest or collection folder."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise DatasetLayoutError(f"{description} {path} (config field clinical_table) does not exist.")
        return path
    folders = [Path(data_dir), Path(collection_folder).parent, Path(collection_folder)]
    for folder in folders:
        for pattern in patterns:
            matches = sorted(folder.glob(pattern))
            if matches:
                return matches[-1]
    raise DatasetLayoutError(
        f"{description} not found: looked for {list(patterns)} in {[str(folder) for folder in folders]}. Download it "
        "from the collection's TCIA page into data_dir, or pass clinical_table=<path>."
    )


@dataclasses.dataclass
class TciaBuilderConfig(LuCaFoundBuilderConfig):
    """Shared config plus `clinical_table`: the clinical file's path when it is not next to the images."""

    clinical_table: str | None = None


class TciaCollectionBuilder(CTVolumeBuilder):
    """What every TCIA CT builder shares: one example per CT series with geometry, labels per patient.

    Rows carry the TCIA subject id and the series/study UIDs (enough to find the files through metadata.csv) but
    no path: descriptive study folder names contain the (shifted) study date.

    Subclasses name the collection folder and implement `_label_features`, `_read_clinical` (patient id -> labels)
    and optionally `_annotation_features` / `_annotations` for per-series annotations. Series without 3D geometry,
    unreadable volumes, duplicates and patients missing from the clinical table are per-example skips, logged and
    counted in `self.skips` (a `SkipCounter`); duplicates are also listed in `self.duplicates.duplicates`.
    """

    COLLECTION = None
    DATASET_NAME = None
    HOMEPAGE = ""
    LICENSE = ""
    CITATION = ""
    DESCRIPTION = ""

    BUILDER_CONFIG_CLASS = TciaBuilderConfig
    BUILDER_CONFIGS = [
        TciaBuilderConfig(
            name="raw",
            description="Each CT series as a NIfTI volume (HU, LPS) with geometry, labels and annotations.",
        ),
        TciaBuilderConfig(
            name="preprocessed",
            description="Each CT series as LuCaFoundImageProcessor pixel_values (float16) with its crop box.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "raw"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Filled while the splits are generated (a build served from the cache leaves them empty).
        self.skips = SkipCounter(self.DATASET_NAME)
        self.duplicates = DuplicateDetector(self.DATASET_NAME)
        self.unrecognised_values = SkipCounter(f"{self.DATASET_NAME} clinical values")

    # ---- subclass hooks -------------------------------------------------------------------------------------
    def _label_features(self):
        raise NotImplementedError

    def _read_clinical(self, data_dir, collection_folder):
        """Patient id -> dict of label columns (exactly the keys of `_label_features`)."""
        raise NotImplementedError

    def _patient_id_of(self, series):
        return series.subject_id

    def _labels_without_clinical_row(self, patient_id):
        """Labels for a patient missing from the clinical table, or None to skip the patient's series."""
        return None

    def _annotation_features(self):
        return {}

    def _prepare_annotations(self, data_dir, collection_folder, series_by_patient):
        """Read collection-wide annotation files once, before the splits are generated."""

    def _annotations(self, patient_id, series, volume, patient_series):
        """Per-series annotation columns (exactly the keys of `_annotation_features`)."""
        return {}

    def _clinical_text_fields(self, labels):
        """Readable name -> value for the structured clinical text (missing values are left out)."""
        return {}

    # ---- datasets builder API -------------------------------------------------------------------------------
    def _info(self):
        features = {
            "patient_id": datasets.Value("string"),
            "series_uid": datasets.Value("string"),
            "study_uid": datasets.Value("string"),
            "series_description": datasets.Value("string"),
            "manufacturer": datasets.Value("string"),
        }
        features.update(self._label_features())
        features.update(self._annotation_features())
        features.update(ct_image_features(self.config))
        if self.config.clinical_text:
            features["text"] = datasets.Value("string")
        return datasets.DatasetInfo(
            description=self.DESCRIPTION,
            features=datasets.Features(features),
            homepage=self.HOMEPAGE,
            license=self.LICENSE,
            citation=self.CITATION,
        )

    def _split_generators(self, dl_manager):
        self.data_folder = require_data_dir(self.config, self.DATASET_NAME)
        self.skips = SkipCounter(self.DATASET_NAME)
        self.duplicates = DuplicateDetector(self.DATASET_NAME)
        collection_folder, series = list_collection_series(
            self.data_folder, self.COLLECTION, skips=self.skips, duplicates=self.duplicates
        )
        self.clinical = self._read_clinical(self.data_folder, collection_folder)
        self.series_by_patient = {}
        for item in series:
            self.series_by_patient.setdefault(self._patient_id_of(item), []).append(item)
        for patient_id in self.series_by_patient:
            if patient_id not in self.clinical:
                labels = self._labels_without_clinical_row(patient_id)
                if labels is not None:
                    self.clinical[patient_id] = labels
        self._prepare_annotations(self.data_folder, collection_folder, self.series_by_patient)
        # Series without 3D geometry (secondary captures...) are dropped before splitting, so that a split is never
        # made of patients whose only CT series cannot be read as a volume.
        self.volume_series = set()
        for patient_id, patient_series in sorted(self.series_by_patient.items()):
            for item in patient_series:
                if item.modality != "CT":
                    continue
                try:
                    problem = series_geometry_problem(item.folder, item.sop_class_uid)
                except DatasetLayoutError as error:
                    problem = str(error)
                if problem:
                    self.skips.skip(f"{patient_id}/{item.series_uid}", problem)
                else:
                    self.volume_series.add(item.series_uid)
        patients = []
        for patient_id, patient_series in sorted(self.series_by_patient.items()):
            if not any(item.series_uid in self.volume_series for item in patient_series):
                continue
            if patient_id not in self.clinical:
                for item in patient_series:
                    if item.series_uid in self.volume_series:
                        reason = f"patient {patient_id} is not in the clinical table"
                        self.skips.skip(f"{patient_id}/{item.series_uid}", reason)
                continue
            patients.append(patient_id)
        without_images = sorted(set(self.clinical) - set(self.series_by_patient))
        if without_images:
            logger.info(
                "%s: %d patient(s) of the clinical table have no images here", self.DATASET_NAME, len(without_images)
            )
        if not patients:
            raise DatasetLayoutError(
                f"{self.DATASET_NAME}: no CT series of a patient in the clinical table under {collection_folder}; "
                "check that data_dir is the download folder and the clinical table belongs to this collection."
            )
        assignment = patient_level_split(
            patients,
            seed=self.config.seed,
            validation_fraction=self.config.validation_fraction,
            test_fraction=self.config.test_fraction,
        )
        self.patient_splits = assignment
        return split_generators_for(assignment)

    def _generate_examples(self, patients):
        for patient_id in patients:
            patient_series = self.series_by_patient[patient_id]
            for series in sorted(patient_series, key=lambda item: item.series_uid):
                if series.series_uid not in self.volume_series:
                    continue
                example = self._series_example(patient_id, series, patient_series)
                if example is not None:
                    yield f"{patient_id}/{series.series_uid}", example
        self.skips.log_summary()

    def _series_example(self, patient_id, series, patient_series):
        key = f"{patient_id}/{series.series_uid}"
        try:
            volume = read_series_volume(series.folder)
        except LuCaFoundInputError as error:
            self.skips.skip(key, f"unreadable volume: {error}")
            return None
        original = self.duplicates.check(key, series_uid=series.series_uid, voxels=volume.array)
        if original is not None:
            self.skips.skip(key, f"duplicate of {original} (same series UID or identical voxels)")
            return None
        example = {
            "patient_id": patient_id,
            "series_uid": series.series_uid,
            "study_uid": series.study_uid,
            "series_description": series.series_description,
            "manufacturer": series.manufacturer,
        }
        example.update(self.clinical[patient_id])
        try:
            example.update(self._annotations(patient_id, series, volume, patient_series))
        except LuCaFoundInputError as error:
            self.skips.skip(key, f"unreadable annotation: {error}")
            return None
        if is_preprocessed_config(self.config):
            try:
                example.update(preprocess_for_dataset(volume.array, self.config, spacing=volume.spacing))
            except LuCaFoundInputError as error:
                self.skips.skip(key, f"preprocessing failed: {error}")
                return None
        else:
            example["image"] = {"bytes": ct_volume_nifti_bytes(volume), "path": f"{series.series_uid}.nii.gz"}
            example.update(volume_geometry(volume))
        if self.config.clinical_text:
            example["text"] = structured_report_text(self._clinical_text_fields(self.clinical[patient_id]))
        return example


def volume_geometry(volume):
    """The `volume_geometry_features` columns of a `CTVolume`."""
    return {
        "shape": [int(size) for size in volume.array.shape],
        "spacing": [float(value) for value in volume.spacing],
        "origin": [float(value) for value in volume.origin],
        "direction": [float(value) for value in np.asarray(volume.direction, dtype=np.float64).reshape(-1)],
    }


def optional_text(value):
    """A free-text cell, NFKC-normalised, or None when it is missing."""
    return None if is_missing(value) else normalise_text(value)


def class_label_value(value, vocabulary, column, row_id, unrecognised=None, aliases=None):
    """The vocabulary entry a messy cell means (case-, space- and width-insensitive), or None when missing.

    A value outside the vocabulary raises `DatasetValueError` naming the row and column, unless `unrecognised`
    (a `SkipCounter`-like recorder) is given: then it is logged, counted and the label left empty (None), never
    guessed. `aliases` maps other spellings (lower case) to vocabulary entries.
    """
    if is_missing(value, extra_missing=("unknown",)):
        return None
    text = " ".join(normalise_text(value).split())
    lookup = {entry.lower(): entry for entry in vocabulary}
    lookup.update({alias.lower(): entry for alias, entry in (aliases or {}).items()})
    if text.lower() in lookup:
        return lookup[text.lower()]
    message = f"column {column!r} of {row_id}: {value!r} is not one of {list(vocabulary)}"
    if unrecognised is None:
        raise DatasetValueError(message + "; fix the table or report the new value.")
    unrecognised.skip(row_id, f"unrecognised value left empty: {message}")
    return None
