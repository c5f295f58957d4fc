"""`DeepLesion`: the NIH DeepLesion collection read from `Images_png/` and `DL_info.csv`, one example per annotated
key slice with the sub-volume around it rebuilt from 16-bit PNG slices (HU = pixel - 32768)."""

import dataclasses
import logging

import datasets
import numpy as np

from .common import (
    CTVolumeBuilder,
    ct_image_features,
    DatasetLayoutError,
    DatasetValueError,
    DuplicateDetector,
    LuCaFoundBuilderConfig,
    SkipCounter,
    is_preprocessed_config,
    nifti_bytes_from_lps_volume,
    official_split_per_patient,
    parse_int,
    parse_number_list,
    patient_level_split,
    preprocess_for_dataset,
    read_csv_table,
    require_data_dir,
    split_generators_for,
    structured_report_text,
    validated_config,
)


logger = logging.getLogger(__name__)

INFO_FILE = "DL_info.csv"
INFO_COLUMNS = (
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Normalized_lesion_location",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Patient_gender",
    "Patient_age",
    "Train_Val_Test",
)
LESION_TYPES = {
    1: "bone",
    2: "abdomen",
    3: "mediastinum",
    4: "liver",
    5: "lung",
    6: "kidney",
    7: "soft tissue",
    8: "pelvis",
    -1: "unknown",
}
LESION_TYPE_CLASSES = ("bone", "abdomen", "mediastinum", "liver", "lung", "kidney", "soft tissue", "pelvis", "unknown")
OFFICIAL_SPLIT_CODES = {1: "train", 2: "validation", 3: "test"}
PIXEL_OFFSET = 32768

_DESCRIPTION = """NIH DeepLesion: 32,735 lesions on CT key slices of 4,427 patients, with RECIST measurements, boxes and
coarse lesion types; slices stored as 16-bit PNG (HU + 32768)."""


@dataclasses.dataclass
class DeepLesionConfig(LuCaFoundBuilderConfig):
    """DeepLesion is mostly abdomen and pelvis: the default crop is the body, not the lungs."""

    crop_mode: str = "body"


class DeepLesion(CTVolumeBuilder):
    """One example per key slice (`File_name`), carrying every lesion measured on it and the slices of its
    `Slice_range` stacked into a volume.

    Strict: `DL_info.csv` with its 18 columns; vectors as quoted ", "-joined numbers; `Images_png/<patient>_<study>_
    <series>/<NNN>.png` (the file name splits on the last `_`); PNGs must be 16-bit; HU = pixel - 32768; spacing from
    `Spacing_mm_px_` (x, y in mm per pixel, then the slice spacing); `Train_Val_Test` 1/2/3 is the official
    patient-level split. A missing, unreadable or wrongly sized slice skips the example (logged and counted), as
    happens for the three PNGs reported unreadable.
    Tolerant (UNCONFIRMED): slice numbers are taken to run from head to foot, so the stack is reversed to put the
    array in LPS order (z towards the head); the in-plane axes are taken as the display orientation (rows
    anterior to posterior, columns patient right to left). The origin is unknown (0, 0, 0).
    `clinical_text=True` adds a `text` column from sex, age and the lesion types (no report exists).
    """

    BUILDER_CONFIG_CLASS = DeepLesionConfig
    BUILDER_CONFIGS = [
        DeepLesionConfig(name="raw", description="Slice ranges as NIfTI volumes with lesions."),
        DeepLesionConfig(name="preprocessed", description="LuCaFoundImageProcessor output (float16) with lesions."),
    ]
    DEFAULT_CONFIG_NAME = "raw"

    def _info(self):
        validated_config(self.config)
        lesion = {
            "bounding_box": datasets.List(datasets.Value("float32"), length=4),
            "measurement_coordinates": datasets.List(datasets.Value("float32"), length=8),
            "diameters_pixels": datasets.List(datasets.Value("float32"), length=2),
            "normalized_location": datasets.List(datasets.Value("float32"), length=3),
            "lesion_type": datasets.ClassLabel(names=list(LESION_TYPE_CLASSES)),
            "possibly_noisy": datasets.Value("bool"),
        }
        features = {
            "file_name": datasets.Value("string"),
            "patient_id": datasets.Value("string"),
            "study_index": datasets.Value("int32"),
            "series_id": datasets.Value("int32"),
            "key_slice_index": datasets.Value("int32"),
            "key_slice_z": datasets.Value("int32"),
            "slice_range": datasets.List(datasets.Value("int32"), length=2),
            "lesions": datasets.List(lesion),
            "dicom_window": datasets.List(datasets.Value("float32"), length=2),
            "patient_sex": datasets.ClassLabel(names=["F", "M"]),
            "patient_age": datasets.Value("int32"),
        }
        if self.config.clinical_text:
            features["text"] = datasets.Value("string")
        features.update(ct_image_features(self.config))
        return datasets.DatasetInfo(description=_DESCRIPTION, features=datasets.Features(features))

    def _split_generators(self, dl_manager):
        root = require_data_dir(self.config, "DeepLesion")
        if not (root / "Images_png").is_dir():
            raise DatasetLayoutError(
                f"{root / 'Images_png'} not found: unzip Images_png_01.zip ... _56.zip into {root}"
            )
        rows = read_csv_table(root / INFO_FILE, INFO_COLUMNS)
        for row in rows:
            row["Patient_index"] = str(parse_int(row["Patient_index"], "Patient_index"))
        official = official_split_per_patient(rows, "Patient_index", _official_split, INFO_FILE)
        assignment = patient_level_split(
            [row["Patient_index"] for row in rows],
            seed=self.config.seed,
            validation_fraction=self.config.validation_fraction,
            test_fraction=self.config.test_fraction,
            official_splits=official,
        )
        self._root, self._rows = root, rows
        return split_generators_for(assignment)

    def _generate_examples(self, patients):
        from modeling_lucafound.errors import LuCaFoundInputError

        wanted = set(patients)
        key_slices = {}
        for row in self._rows:
            if row["Patient_index"] in wanted:
                key_slices.setdefault(row["File_name"], []).append(row)
        skips, duplicates = SkipCounter("DeepLesion"), DuplicateDetector("DeepLesion")
        for file_name, rows in sorted(key_slices.items()):
            first = rows[0]
            try:
                folder, key_slice = _split_file_name(file_name)
                slice_range = [int(value) for value in parse_number_list(first["Slice_range"], 2, "Slice_range")]
                spacing_xyz = parse_number_list(first["Spacing_mm_px_"], 3, "Spacing_mm_px_")
                image_size = [int(value) for value in parse_number_list(first["Image_size"], 2, "Image_size")]
                lesions = [_lesion(row) for row in rows]
            except DatasetValueError as error:
                skips.skip(file_name, str(error))
                continue
            if not slice_range[0] <= key_slice <= slice_range[1]:
                skips.skip(file_name, f"key slice {key_slice} outside Slice_range {slice_range}")
                continue
            try:
                hu_in_slice_order = _read_slices(self._root / "Images_png" / folder, slice_range, image_size)
            except DatasetLayoutError as error:
                skips.skip(file_name, str(error))
                continue
            hu = hu_in_slice_order[::-1].copy()  # slice numbers run head to foot (UNCONFIRMED); LPS z runs up
            spacing = (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0]))
            duplicates.check(file_name, voxels=hu)
            sex = first["Patient_gender"].strip().upper()
            example = {
                "file_name": file_name,
                "patient_id": first["Patient_index"],
                "study_index": parse_int(first["Study_index"], "Study_index"),
                "series_id": parse_int(first["Series_ID"], "Series_ID"),
                "key_slice_index": key_slice,
                "key_slice_z": slice_range[1] - key_slice,
                "slice_range": slice_range,
                "lesions": lesions,
                "dicom_window": parse_number_list(first["DICOM_windows"], 2, "DICOM_windows"),
                "patient_sex": sex if sex in ("F", "M") else -1,
                "patient_age": parse_int(first["Patient_age"], "Patient_age"),
            }
            if self.config.clinical_text:
                example["text"] = structured_report_text(
                    {
                        "sex": {"F": "female", "M": "male"}.get(sex),
                        "age": example["patient_age"],
                        "lesion types": ", ".join(
                            sorted({LESION_TYPE_CLASSES[lesion["lesion_type"]] for lesion in lesions})
                        ),
                    }
                )
            if is_preprocessed_config(self.config):
                try:
                    example.update(preprocess_for_dataset(hu, self.config, spacing=spacing))
                except LuCaFoundInputError as error:
                    skips.skip(file_name, f"preprocessing failed: {error}")
                    continue
            else:
                example.update(
                    {
                        "image": {
                            "bytes": nifti_bytes_from_lps_volume(hu, spacing, (0.0, 0.0, 0.0)),
                            "path": f"{file_name[:-4]}.nii.gz",
                        },
                        "shape": list(hu.shape),
                        "spacing": list(spacing),
                        "origin": [0.0, 0.0, 0.0],
                        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                    }
                )
            yield file_name, example
        skips.log_summary()


def _official_split(row):
    code = parse_int(row["Train_Val_Test"], "Train_Val_Test")
    if code is None:
        return None
    if code not in OFFICIAL_SPLIT_CODES:
        raise DatasetValueError(f"{INFO_FILE}: Train_Val_Test must be 1, 2 or 3, got {row['Train_Val_Test']!r}")
    return OFFICIAL_SPLIT_CODES[code]


def _split_file_name(file_name):
    """`000089_01_01_037.png` -> (`000089_01_01`, 37): the slice number follows the last underscore."""
    stem = file_name.strip().removesuffix(".png")
    folder, _, number = stem.rpartition("_")
    if not folder or not number.isdigit():
        raise DatasetValueError(f"{INFO_FILE}: File_name {file_name!r} is not <patient>_<study>_<series>_<slice>.png")
    return folder, int(number)


def _lesion(row):
    lesion_type = parse_int(row["Coarse_lesion_type"], "Coarse_lesion_type")
    if lesion_type not in LESION_TYPES:
        raise DatasetValueError(f"Coarse_lesion_type must be -1 or 1-8, got {row['Coarse_lesion_type']!r}")
    return {
        "bounding_box": parse_number_list(row["Bounding_boxes"], 4, "Bounding_boxes"),
        "measurement_coordinates": parse_number_list(row["Measurement_coordinates"], 8, "Measurement_coordinates"),
        "diameters_pixels": parse_number_list(row["Lesion_diameters_Pixel_"], 2, "Lesion_diameters_Pixel_"),
        "normalized_location": parse_number_list(row["Normalized_lesion_location"], 3, "Normalized_lesion_location"),
        "lesion_type": LESION_TYPE_CLASSES.index(LESION_TYPES[lesion_type]),
        "possibly_noisy": bool(parse_int(row["Possibly_noisy"], "Possibly_noisy") or 0),
    }


def _read_slices(folder, slice_range, image_size):
    """Slices `slice_range[0]..slice_range[1]` of a series folder as int16 HU, in slice-number order."""
    from PIL import Image

    if not folder.is_dir():
        raise DatasetLayoutError(f"series folder {folder.name} missing from Images_png")
    slices = []
    for number in range(slice_range[0], slice_range[1] + 1):
        path = folder / f"{number:03d}.png"
        if not path.is_file():
            raise DatasetLayoutError(f"slice {path.name} of {folder.name} is missing")
        try:
            with Image.open(path) as image:
                if image.mode not in ("I;16", "I;16B", "I"):
                    raise DatasetLayoutError(f"{folder.name}/{path.name} is not a 16-bit PNG (mode {image.mode})")
                pixels = np.asarray(image, dtype=np.int32)
        except (OSError, SyntaxError, ValueError) as error:
            raise DatasetLayoutError(f"{folder.name}/{path.name} is unreadable: {error}") from None
        if list(pixels.shape) != [image_size[1], image_size[0]] and list(pixels.shape) != image_size:
            raise DatasetLayoutError(f"{folder.name}/{path.name} is {pixels.shape}, DL_info.csv says {image_size}")
        slices.append(np.clip(pixels - PIXEL_OFFSET, -1024, 3071).astype(np.int16))
    return np.stack(slices)
