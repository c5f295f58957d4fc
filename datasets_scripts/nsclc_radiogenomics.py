"""`NsclcRadiogenomics`: the NSCLC Radiogenomics TCIA collection (R01-NNN, AMC-NNN) as a `datasets` builder.

Reads the NBIA Data Retriever download (`manifest-*/NSCLC Radiogenomics/<Case ID>/<study>/<series>/`) and the
clinical table `NSCLCR01Radiogenomic_DATA_LABELS_2018-05-22_1500-shifted.csv`. One example per CT series with
3D geometry (a patient may have several, e.g. `CT FUSION`: the series inventory is UNCONFIRMED, so every CT
series is kept and `series_description` tells them apart; splits are by patient). Labels: EGFR, KRAS, ALK,
histology, pathological T/N/M (the table has no overall stage), recurrence, survival days and event.

Real-data notes (DATASETS.md section 3): the header `Histology ` has a trailing space; `Not Collected`,
`Not collected`, `Unknown` and blanks are missing values; dates are MM/DD/YYYY and shifted (never output).
Survival: the event is `Survival Status` (Dead = 1). `Time to Death (days)` exists only for deaths; for the
censored (and for deaths without it) the time is derived as `Date of Last Known Alive` (or `Date of Death`)
minus the surgery date (`CT Date` + `Days between CT and surgery`); `survival_days_derived` marks those rows.
That derivation, and whether `Time to Death (days)` counts from the same day, is UNCONFIRMED as official.
ALK and Recurrence values outside the documented vocabulary are left empty and counted in
`unrecognised_values` (their vocabularies are UNCONFIRMED); everything else is strict. Only R01 patients have
tumour segmentations (DICOM SEG): a SEG with exactly one segment on the CT's frame of reference becomes
`tumor_mask` / `tumor_volume_ml` / `tumor_bbox` (that R01 SEGs hold just the tumour is UNCONFIRMED; other SEGs are
only listed in `segment_labels`). AIM XML annotations are not read. Licence UNCONFIRMED.
"""

import datetime
import logging

import datasets

from .common import (
    DatasetValueError,
    SkipCounter,
    is_missing,
    is_preprocessed_config,
    normalise_text,
    parse_float,
    read_csv_table,
)
from .nsclc_radiomics import read_segment_mask_from_file, segment_labels, tumour_mask_columns
from .tcia import (
    TciaCollectionBuilder,
    class_label_value,
    dicom_files,
    find_table,
    optional_text,
    read_dicom_dataset,
    read_dicom_header,
)


logger = logging.getLogger(__name__)

CLINICAL_TABLE_PATTERNS = ("NSCLCR01Radiogenomic_DATA_LABELS*.csv", "*Radiogenomic*LABELS*.csv")
CLINICAL_COLUMNS = (
    "Case ID", "Patient affiliation", "Age at Histological Diagnosis", "Weight (lbs)", "Gender", "Smoking status",
    "Pack Years", "%GG", "Histology", "Pathological T stage", "Pathological N stage", "Pathological M stage",
    "Histopathological Grade", "EGFR mutation status", "KRAS mutation status", "ALK translocation status",
    "Recurrence", "Date of Last Known Alive", "Survival Status", "Date of Death", "Time to Death (days)", "CT Date",
    "Days between CT and surgery",
)  # fmt: skip
TUMOR_LOCATION_PREFIX = "Tumor Location (choice="
HISTOLOGY_NAMES = ["Adenocarcinoma", "Squamous cell carcinoma", "NSCLC NOS (not otherwise specified)"]
GENDER_NAMES = ["Female", "Male"]
SMOKING_NAMES = ["Current", "Former", "Nonsmoker"]
T_STAGE_NAMES = ["Tis", "T1a", "T1b", "T2a", "T2b", "T3", "T4"]
N_STAGE_NAMES = ["N0", "N1", "N2"]
M_STAGE_NAMES = ["M0", "M1a", "M1b"]
MUTATION_NAMES = ["Wildtype", "Mutant"]
ALK_NAMES = ["Wildtype", "Translocated"]
RECURRENCE_NAMES = ["no", "yes"]
SURVIVAL_STATUS_EVENT = {"alive": 0, "dead": 1}


def parse_shifted_date(value, column, row_id):
    """A `MM/DD/YYYY` cell as a date (None when missing); used only to compute intervals, never output."""
    if is_missing(value):
        return None
    try:
        return datetime.datetime.strptime(normalise_text(value), "%m/%d/%Y").date()
    except ValueError:
        raise DatasetValueError(f"column {column!r} of {row_id}: {value!r} is not a MM/DD/YYYY date") from None


def survival_time(row, event, row_id):
    """(days, derived) for one clinical row; derived days count from surgery (CT date + days to surgery)."""
    if event == 1:
        days = parse_float(row["Time to Death (days)"], "Time to Death (days)")
        if days is not None:
            return days, False
    end_column = "Date of Death" if event == 1 else "Date of Last Known Alive"
    end = parse_shifted_date(row[end_column], end_column, row_id)
    ct_date = parse_shifted_date(row["CT Date"], "CT Date", row_id)
    days_to_surgery = parse_float(row["Days between CT and surgery"], "Days between CT and surgery")
    if end is None or ct_date is None or days_to_surgery is None:
        return None, False
    days = (end - ct_date).days - days_to_surgery
    if days < 0:
        raise DatasetValueError(
            f"{row_id}: {end_column} lies {-days:.0f} days before surgery (CT Date + Days between CT and surgery); "
            "check the row's dates."
        )
    return float(days), True


def read_radiogenomics_clinical(path, unrecognised):
    """Case ID -> label columns from the radiogenomics clinical CSV (`unrecognised` counts tolerated odd values)."""
    rows = read_csv_table(path, CLINICAL_COLUMNS)
    clinical = {}
    for row in rows:
        patient_id = row["Case ID"].strip()
        row_id = f"{path.name} row {patient_id}"
        if patient_id in clinical:
            raise DatasetValueError(f"{path}: Case ID {patient_id} is listed twice; keep one row per patient.")
        status = normalise_text(row["Survival Status"]).lower()
        if status and status not in SURVIVAL_STATUS_EVENT:
            raise DatasetValueError(
                f"column 'Survival Status' of {row_id}: {row['Survival Status']!r} is not Alive or Dead"
            )
        event = SURVIVAL_STATUS_EVENT.get(status)
        days, derived = survival_time(row, event, row_id) if event is not None else (None, False)
        locations = [
            name[len(TUMOR_LOCATION_PREFIX) : -1]
            for name, value in row.items()
            if name.startswith(TUMOR_LOCATION_PREFIX) and normalise_text(value).lower() == "checked"
        ]
        clinical[patient_id] = {
            "patient_affiliation": None if is_missing(row["Patient affiliation"]) else row["Patient affiliation"],
            "age": parse_float(row["Age at Histological Diagnosis"], "Age at Histological Diagnosis"),
            "gender": class_label_value(row["Gender"], GENDER_NAMES, "Gender", row_id),
            "weight_lbs": parse_float(row["Weight (lbs)"], "Weight (lbs)"),
            "smoking_status": class_label_value(row["Smoking status"], SMOKING_NAMES, "Smoking status", row_id),
            "pack_years": parse_float(row["Pack Years"], "Pack Years"),
            "ground_glass_percent": None if is_missing(row["%GG"]) else normalise_text(row["%GG"]),
            "tumor_locations": locations,
            "histology": class_label_value(row["Histology"], HISTOLOGY_NAMES, "Histology", row_id),
            "t_stage": class_label_value(row["Pathological T stage"], T_STAGE_NAMES, "Pathological T stage", row_id),
            "n_stage": class_label_value(row["Pathological N stage"], N_STAGE_NAMES, "Pathological N stage", row_id),
            "m_stage": class_label_value(row["Pathological M stage"], M_STAGE_NAMES, "Pathological M stage", row_id),
            "histopathological_grade": optional_text(row["Histopathological Grade"]),
            "egfr": class_label_value(row["EGFR mutation status"], MUTATION_NAMES, "EGFR mutation status", row_id),
            "kras": class_label_value(row["KRAS mutation status"], MUTATION_NAMES, "KRAS mutation status", row_id),
            "alk": class_label_value(
                row["ALK translocation status"], ALK_NAMES, "ALK translocation status", row_id, unrecognised
            ),
            "recurrence": class_label_value(row["Recurrence"], RECURRENCE_NAMES, "Recurrence", row_id, unrecognised),
            "survival_days": days,
            "survival_days_derived": derived,
            "event": event,
        }
    return clinical


class NsclcRadiogenomics(TciaCollectionBuilder):
    """NSCLC Radiogenomics: 211 NSCLC patients (R01 Stanford/VA, AMC) with CT, mutation status and outcome."""

    COLLECTION = ("NSCLC Radiogenomics", "NSCLC-Radiogenomics")  # the folder name with the space is UNCONFIRMED
    DATASET_NAME = "NSCLC-Radiogenomics"
    HOMEPAGE = "https://www.cancerimagingarchive.net/collection/nsclc-radiogenomics/"
    LICENSE = "UNCONFIRMED; check the TCIA collection page"
    CITATION = (
        "Bakr S et al. A radiogenomic dataset of non-small cell lung cancer. Sci Data 5, 180202 (2018). "
        "Data: doi:10.7937/K9/TCIA.2017.7hs46erv"
    )
    DESCRIPTION = __doc__
    VERSION = datasets.Version("1.0.0")

    def _label_features(self):
        return {
            "patient_affiliation": datasets.Value("string"),
            "age": datasets.Value("float32"),
            "gender": datasets.ClassLabel(names=GENDER_NAMES),
            "weight_lbs": datasets.Value("float32"),
            "smoking_status": datasets.ClassLabel(names=SMOKING_NAMES),
            "pack_years": datasets.Value("float32"),
            "ground_glass_percent": datasets.Value("string"),
            "tumor_locations": datasets.List(datasets.Value("string")),
            "histology": datasets.ClassLabel(names=HISTOLOGY_NAMES),
            "t_stage": datasets.ClassLabel(names=T_STAGE_NAMES),
            "n_stage": datasets.ClassLabel(names=N_STAGE_NAMES),
            "m_stage": datasets.ClassLabel(names=M_STAGE_NAMES),
            "histopathological_grade": datasets.Value("string"),
            "egfr": datasets.ClassLabel(names=MUTATION_NAMES),
            "kras": datasets.ClassLabel(names=MUTATION_NAMES),
            "alk": datasets.ClassLabel(names=ALK_NAMES),
            "recurrence": datasets.ClassLabel(names=RECURRENCE_NAMES),
            "survival_days": datasets.Value("float32"),
            "survival_days_derived": datasets.Value("bool"),
            "event": datasets.Value("int8"),
        }

    def _annotation_features(self):
        features = {
            "segment_labels": datasets.List(datasets.Value("string")),
            "tumor_volume_ml": datasets.Value("float32"),
            "tumor_bbox": datasets.List(datasets.List(datasets.Value("int32"), length=2), length=3),
        }
        if not is_preprocessed_config(self.config):
            features["tumor_mask"] = datasets.Nifti()
        return features

    def _patient_id_of(self, series):
        return series.subject_id.strip()

    def _read_clinical(self, data_dir, collection_folder):
        path = find_table(
            data_dir, collection_folder, CLINICAL_TABLE_PATTERNS, "the NSCLC Radiogenomics clinical CSV",
            self.config.clinical_table,
        )  # fmt: skip
        self.unrecognised_values = SkipCounter(f"{self.DATASET_NAME} clinical values")
        clinical = read_radiogenomics_clinical(path, self.unrecognised_values)
        self.unrecognised_values.log_summary()
        return clinical

    def _annotations(self, patient_id, series, volume, patient_series):
        """Segment labels of the patient's SEGs; a SEG with exactly one segment on this CT's frame of reference is
        taken as the tumour (R01 segmentations; UNCONFIRMED for the real files, so any other SEG gives no mask)."""
        frame_of_reference = str(read_dicom_header(dicom_files(series.folder)[0]).get("FrameOfReferenceUID", ""))
        labels, mask = [], None
        for item in patient_series:
            if item.modality != "SEG":
                continue
            for path in dicom_files(item.folder):
                segmentation = read_dicom_dataset(path)
                segments = segment_labels(segmentation)
                labels.extend(label for label in segments.values() if label not in labels)
                same_frame = str(segmentation.get("FrameOfReferenceUID", frame_of_reference)) == frame_of_reference
                if mask is None and len(segments) == 1 and same_frame:
                    only_label = next(iter(segments.values()))
                    mask, outside = read_segment_mask_from_file(segmentation, path, volume, only_label)
                    if outside:
                        logger.warning(
                            "%s/%s: %d SEG voxel(s) outside the CT grid were dropped",
                            patient_id,
                            series.series_uid,
                            outside,
                        )
        return {
            "segment_labels": labels,
            **tumour_mask_columns(
                "tumor", volume, mask, series.series_uid, include_mask_file=not is_preprocessed_config(self.config)
            ),
        }

    def _clinical_text_fields(self, labels):
        return {
            "Sex": labels["gender"],
            "Age": None if labels["age"] is None else int(round(labels["age"])),
            "Smoking status": labels["smoking_status"],
            "Histology": labels["histology"],
            "Pathological T stage": labels["t_stage"],
            "Pathological N stage": labels["n_stage"],
            "Pathological M stage": labels["m_stage"],
            "EGFR": labels["egfr"],
            "KRAS": labels["kras"],
            "ALK": labels["alk"],
        }
