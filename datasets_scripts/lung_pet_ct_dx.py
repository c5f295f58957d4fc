"""`LungPetCtDx`: the Lung-PET-CT-Dx TCIA collection (lung cancer CT/PET-CT with tumour boxes) as a `datasets` builder.

Reads the NBIA Data Retriever download (`manifest-*/Lung-PET-CT-Dx/Lung_Dx-A0001/<study>/<series>/1-01.dcm`),
the annotation folder `Annotation/A0001/<SOPInstanceUID>.xml` (PASCAL VOC, one file per annotated slice; the
patient folder has no `Lung_Dx-` prefix) and `statistics-clinical-20201221.xlsx`. One example per CT series
with 3D geometry; splits are by patient. Histology comes from the patient letter (A adenocarcinoma, B small
cell, E large cell, G squamous cell). Each XML box is linked to its slice by the file stem (= SOPInstanceUID)
and converted through that slice's geometry into the canonical LPS array.

Real-data notes (DATASETS.md section 4): secondary-capture series (fused MPRs, SOP class 1.2.840.10008.5.1.4.1.1.7)
have no 3D geometry: skipped, logged and counted; XML files whose slice is in no yielded series are counted in
`unmatched_annotations`. The XML fields folder/filename/path are the literal `Unknow`; `<Difficult>` has a capital
D. The xlsx header `Ｍ-Stage` starts with a full-width M (normalised). The values of T-Stage, N-Stage, M-Stage,
Smoking History and Histopathological grading are UNCONFIRMED: stages are read tolerantly (`1a`, `T1a`, `2.0`)
into the TNM vocabularies below, anything else is left empty and counted in `unrecognised_values`; smoking history
and grading are kept as text. `boxes` is None when no Annotation folder was found (unknown), [] when the series has
none.
"""

import logging
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import datasets

from .common import DatasetLayoutError, DatasetValueError, SkipCounter, is_missing, normalise_text, parse_float
from .tcia import (
    TciaCollectionBuilder,
    class_label_value,
    dicom_box_to_volume_box,
    find_table,
    optional_text,
    read_series_headers,
)


logger = logging.getLogger(__name__)

CLINICAL_TABLE_PATTERNS = ("statistics-clinical-*.xlsx", "*clinical*.xlsx")
# Header names after NFKC normalisation (`Ｍ-Stage` -> `M-Stage`).
CLINICAL_COLUMNS = (
    "NewPatientID", "Sex", "Age", "weight (kg)", "T-Stage", "N-Stage", "M-Stage", "Histopathological grading",
    "Smoking History",
)  # fmt: skip
PATIENT_PREFIX = "Lung_Dx-"
HISTOLOGY_BY_LETTER = {
    "A": "adenocarcinoma",
    "B": "small cell carcinoma",
    "E": "large cell carcinoma",
    "G": "squamous cell carcinoma",
}
HISTOLOGY_NAMES = list(HISTOLOGY_BY_LETTER.values())
BOX_LETTERS = list(HISTOLOGY_BY_LETTER)
SEX_NAMES = ["F", "M"]
T_STAGE_NAMES = ["Tis", "T1", "T1a", "T1b", "T1c", "T2", "T2a", "T2b", "T3", "T4"]
N_STAGE_NAMES = ["N0", "N1", "N2", "N3"]
M_STAGE_NAMES = ["M0", "M1", "M1a", "M1b", "M1c"]
_PATIENT_PATTERN = re.compile(r"^(?:Lung_Dx-)?(?P<letter>[A-Z])(?P<number>\d{4})$", re.IGNORECASE)


def patient_id_from(value):
    """`A0001`, `Lung_Dx-A0001` (any case, spaces) -> `Lung_Dx-A0001`; anything else raises `DatasetValueError`."""
    match = _PATIENT_PATTERN.match(normalise_text(value) if value is not None else "")
    if match is None:
        raise DatasetValueError(
            f"{value!r} is not a Lung-PET-CT-Dx patient id (Lung_Dx-<letter><4 digits> or <letter><4 digits>)"
        )
    return f"{PATIENT_PREFIX}{match['letter'].upper()}{match['number']}"


def histology_of(patient_id):
    """The histology named by the patient letter, or None for a letter outside A/B/E/G."""
    return HISTOLOGY_BY_LETTER.get(patient_id[len(PATIENT_PREFIX)])


def _stage_label(value, prefix, vocabulary, column, row_id, unrecognised):
    """`1a`, `T1a`, `2`, `2.0` -> `T1a`/`T2` style labels; odd values are left empty and counted."""
    if is_missing(value):
        return None
    text = normalise_text(value).replace(" ", "")
    if text.upper().startswith(prefix):
        text = text[len(prefix) :]
    text = re.sub(r"^(\d+)\.0$", r"\1", text)
    return class_label_value(f"{prefix}{text}", vocabulary, column, row_id, unrecognised)


def read_clinical_workbook(path, unrecognised):
    """Patient id -> clinical columns from `statistics-clinical-20201221.xlsx` (first sheet, header row first)."""
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # openpyxl raises several types for damaged files
        raise DatasetLayoutError(f"{path} is not a readable .xlsx workbook ({error}); download it again.") from error
    rows = list(workbook.worksheets[0].iter_rows(values_only=True))
    workbook.close()
    if not rows:
        raise DatasetLayoutError(f"{path} is empty: expected a header with {list(CLINICAL_COLUMNS)}")
    header = [normalise_text(name) if name is not None else "" for name in rows[0]]
    missing = [column for column in CLINICAL_COLUMNS if column not in header]
    if missing:
        raise DatasetLayoutError(
            f"{path} lacks the column(s) {missing}; found {header}. Use the workbook as TCIA provides it."
        )
    clinical = {}
    for cells in rows[1:]:
        if cells is None or all(cell is None or str(cell).strip() == "" for cell in cells):
            continue
        row = dict(zip(header, cells))
        patient_id = patient_id_from(row["NewPatientID"])
        row_id = f"{path.name} row {patient_id}"
        age_text = None if is_missing(row["Age"]) else re.sub(r"[Yy]$", "", normalise_text(row["Age"]))
        labels = {
            "histology": histology_of(patient_id),
            "sex": class_label_value(row["Sex"], SEX_NAMES, "Sex", row_id),
            "age": parse_float(age_text, "Age"),
            "weight_kg": parse_float(row["weight (kg)"], "weight (kg)"),
            "t_stage": _stage_label(row["T-Stage"], "T", T_STAGE_NAMES, "T-Stage", row_id, unrecognised),
            "n_stage": _stage_label(row["N-Stage"], "N", N_STAGE_NAMES, "N-Stage", row_id, unrecognised),
            "m_stage": _stage_label(row["M-Stage"], "M", M_STAGE_NAMES, "Ｍ-Stage", row_id, unrecognised),
            "histopathological_grading": optional_text(row["Histopathological grading"]),
            "smoking_history": optional_text(row["Smoking History"]),
        }
        if patient_id in clinical and clinical[patient_id] != labels:
            raise DatasetValueError(f"{path}: {patient_id} has two different rows; keep one row per patient.")
        clinical[patient_id] = labels
    return clinical


def read_voc_annotation(path):
    """Boxes of one PASCAL VOC file: list of dicts with the letter, `difficult` and (xmin, ymin, xmax, ymax) pixels."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise DatasetLayoutError(f"{path} is not readable XML ({error}); download the annotations again.") from error
    boxes = []
    for item in root.iter("object"):
        name = (item.findtext("name") or "").strip()
        difficult = item.findtext("Difficult", item.findtext("difficult", "0")) or "0"
        box = item.find("bndbox")
        if box is None:
            raise DatasetLayoutError(f"{path}: an <object> has no <bndbox>")
        try:
            pixels = [float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise DatasetLayoutError(f"{path}: a <bndbox> lacks a numeric xmin/ymin/xmax/ymax") from None
        boxes.append({"letter": name, "difficult": difficult.strip() not in ("0", ""), "pixel_box": pixels})
    return boxes


def find_annotation_folder(data_dir, collection_folder):
    """The `Annotation` folder (patient folders `A0001`...) in `data_dir` or next to the download, or None."""
    collection_folder = Path(collection_folder)
    for folder in (Path(data_dir), collection_folder.parent, collection_folder, collection_folder.parent.parent):
        for name in ("Annotation", "annotation", "Annotations"):
            if (folder / name).is_dir():
                return folder / name
    return None


class LungPetCtDx(TciaCollectionBuilder):
    """Lung-PET-CT-Dx: 355 patients with lung cancer (4 histologies), CT and PET/CT, tumour boxes per slice."""

    COLLECTION = "Lung-PET-CT-Dx"
    DATASET_NAME = "Lung-PET-CT-Dx"
    HOMEPAGE = "https://www.cancerimagingarchive.net/collection/lung-pet-ct-dx/"
    LICENSE = "CC BY 4.0"
    CITATION = (
        "Li P et al. A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis (Lung-PET-CT-Dx). "
        "The Cancer Imaging Archive (2020). doi:10.7937/TCIA.2020.NNC2-0461"
    )
    DESCRIPTION = __doc__
    VERSION = datasets.Version("1.0.0")

    def _label_features(self):
        return {
            "histology": datasets.ClassLabel(names=HISTOLOGY_NAMES),
            "sex": datasets.ClassLabel(names=SEX_NAMES),
            "age": datasets.Value("float32"),
            "weight_kg": datasets.Value("float32"),
            "t_stage": datasets.ClassLabel(names=T_STAGE_NAMES),
            "n_stage": datasets.ClassLabel(names=N_STAGE_NAMES),
            "m_stage": datasets.ClassLabel(names=M_STAGE_NAMES),
            "histopathological_grading": datasets.Value("string"),
            "smoking_history": datasets.Value("string"),
        }

    def _annotation_features(self):
        return {
            "boxes": datasets.List(
                {
                    "sop_instance_uid": datasets.Value("string"),
                    "label": datasets.ClassLabel(names=BOX_LETTERS),
                    "difficult": datasets.Value("bool"),
                    "pixel_box": datasets.List(datasets.Value("float32"), length=4),
                    "bbox": datasets.List(datasets.List(datasets.Value("int32"), length=2), length=3),
                }
            )
        }

    def _patient_id_of(self, series):
        try:
            return patient_id_from(series.subject_id)
        except DatasetValueError:
            return series.subject_id

    def _read_clinical(self, data_dir, collection_folder):
        path = find_table(
            data_dir,
            collection_folder,
            CLINICAL_TABLE_PATTERNS,
            "statistics-clinical-20201221.xlsx",
            self.config.clinical_table,
        )
        self.unrecognised_values = SkipCounter(f"{self.DATASET_NAME} clinical values")
        clinical = read_clinical_workbook(path, self.unrecognised_values)
        for patient_id in list(clinical):
            if clinical[patient_id]["histology"] is None:
                self.unrecognised_values.skip(patient_id, "patient letter is not A, B, E or G: no histology")
                del clinical[patient_id]
        return clinical

    def _labels_without_clinical_row(self, patient_id):
        histology = histology_of(patient_id) if patient_id.startswith(PATIENT_PREFIX) else None
        if histology is None:
            return None
        logger.warning(
            "%s: %s is not in the clinical workbook; only its histology (from the letter) is known",
            self.DATASET_NAME,
            patient_id,
        )
        return {name: None for name in self._label_features()} | {"histology": histology}

    def _prepare_annotations(self, data_dir, collection_folder, series_by_patient):
        """Read every XML of the patients present: patient id -> {SOPInstanceUID: (path, boxes)}."""
        self.annotation_folder = find_annotation_folder(data_dir, collection_folder)
        self.annotations_by_patient = {}
        self.matched_annotation_files = set()
        self.processed_patients = set()
        self.unmatched_annotations = []
        if self.annotation_folder is None:
            logger.warning(
                "%s: no Annotation folder found in %s: boxes will be None (unknown)", self.DATASET_NAME, data_dir
            )
            return
        for patient_id in series_by_patient:
            folder = self.annotation_folder / patient_id[len(PATIENT_PREFIX) :]
            if not folder.is_dir():
                folder = self.annotation_folder / patient_id
            if not folder.is_dir():
                continue
            self.annotations_by_patient[patient_id] = {path.stem: path for path in sorted(folder.glob("*.xml"))}

    def _annotations(self, patient_id, series, volume, patient_series):
        if self.annotation_folder is None:
            return {"boxes": None}
        files = self.annotations_by_patient.get(patient_id, {})
        boxes = []
        if files:
            for header in read_series_headers(series.folder):
                uid = str(header.SOPInstanceUID)
                if uid not in files:
                    continue
                self.matched_annotation_files.add(files[uid])
                for box in read_voc_annotation(files[uid]):
                    letter = class_label_value(box["letter"], BOX_LETTERS, "<name>", str(files[uid]))
                    if letter != patient_id[len(PATIENT_PREFIX)]:
                        logger.warning(
                            "%s: box letter %s differs from the patient letter of %s", files[uid], letter, patient_id
                        )
                    boxes.append(
                        {
                            "sop_instance_uid": uid,
                            "label": letter,
                            "difficult": box["difficult"],
                            "pixel_box": box["pixel_box"],
                            "bbox": dicom_box_to_volume_box(header, box["pixel_box"], volume),
                        }
                    )
        return {"boxes": boxes}

    def _generate_examples(self, patients):
        yield from super()._generate_examples(patients)
        self.processed_patients.update(patients)
        self.unmatched_annotations = sorted(
            str(path)
            for patient_id in sorted(self.processed_patients & set(self.annotations_by_patient))
            for path in self.annotations_by_patient[patient_id].values()
            if path not in self.matched_annotation_files
        )
        if self.unmatched_annotations:
            logger.warning(
                "%s: %d annotation file(s) refer to slices of no yielded CT series (e.g. secondary captures)",
                self.DATASET_NAME,
                len(self.unmatched_annotations),
            )

    def _clinical_text_fields(self, labels):
        return {
            "Sex": {"F": "female", "M": "male"}.get(labels["sex"]),
            "Age": None if labels["age"] is None else int(round(labels["age"])),
            "Histology": labels["histology"],
            "T stage": labels["t_stage"],
            "N stage": labels["n_stage"],
            "M stage": labels["m_stage"],
        }
