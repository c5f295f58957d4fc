"""`NsclcRadiomics`: the NSCLC-Radiomics ("Lung1") TCIA collection as a `datasets` builder.

Reads the NBIA Data Retriever download (`manifest-*/NSCLC-Radiomics/LUNG1-NNN/<study>/<series>/`, classic or
descriptive folder names) and `NSCLC-Radiomics-Lung1.clinical-version3-Oct-2019.csv`. One example per CT series
(one per patient in the real collection), labelled with histology, clinical T/N/M and overall stage, survival
days and event; the gross tumour volume (`GTV-1`) comes from the patient's DICOM SEG (Manufacturer QIICR),
placed on the CT grid by each frame's position, or, for downloads without SEG, from the RTSTRUCT's `GTV-1`
contours filled slice by slice (`gtv_source` says which); the RTSTRUCT's ROI names are listed.

Real-data notes (DATASETS.md section 2): LUNG1-128 has no tumour segmentation (GTV columns empty); the SEG of
LUNG1-014, 021, 085, 095 and 194 differs in shape from the image: frames are placed by position, voxels outside
the CT grid are dropped and logged. `clinical.T.Stage` is lower case; T may be written `2` or `2.0`; missing
values are blank (a literal `NA` is treated the same, UNCONFIRMED). The meaning of T5 and M3 is UNCONFIRMED:
they are kept as their own classes. The licence is UNCONFIRMED (CC BY 3.0 per neuro-ml/amid).
"""

import logging

import datasets
import numpy as np

from .common import (
    DatasetLayoutError,
    DatasetValueError,
    is_missing,
    is_preprocessed_config,
    normalise_text,
    parse_float,
    parse_int,
    read_csv_table,
)
from .tcia import (
    TciaCollectionBuilder,
    class_label_value,
    ct_volume_nifti_bytes,
    dicom_files,
    read_dicom_dataset,
    read_dicom_header,
    volume_index_of_world,
)


logger = logging.getLogger(__name__)

CLINICAL_TABLE_PATTERNS = ("NSCLC-Radiomics-Lung1.clinical*.csv", "*Lung1*clinical*.csv")
CLINICAL_COLUMNS = (
    "PatientID", "age", "clinical.T.Stage", "Clinical.N.Stage", "Clinical.M.Stage", "Overall.Stage", "Histology",
    "gender", "Survival.time", "deadstatus.event",
)  # fmt: skip
HISTOLOGY_NAMES = ["adenocarcinoma", "squamous cell carcinoma", "large cell", "nos"]
GENDER_NAMES = ["female", "male"]
T_STAGE_NAMES = ["T1", "T2", "T3", "T4", "T5"]
N_STAGE_NAMES = ["N0", "N1", "N2", "N3", "N4"]
M_STAGE_NAMES = ["M0", "M1", "M3"]
OVERALL_STAGE_NAMES = ["I", "II", "IIIa", "IIIb"]
TUMOUR_SEGMENT_LABEL = "GTV-1"


def _stage_label(value, prefix, vocabulary, column, row_id):
    """`2`, `2.0` or `T2` -> `T2`; missing -> None; anything else raises `DatasetValueError`."""
    if is_missing(value):
        return None
    text = normalise_text(value)
    if text.upper().startswith(prefix):
        text = text[len(prefix) :]
    number = parse_int(text, column)
    return None if number is None else class_label_value(f"{prefix}{number}", vocabulary, column, row_id)


def read_lung1_clinical(path):
    """Patient id -> label columns from the Lung1 clinical CSV, every value checked against its vocabulary."""
    clinical = {}
    for row in read_csv_table(path, CLINICAL_COLUMNS):
        patient_id = row["PatientID"].strip()
        row_id = f"{path.name} row {patient_id}"
        if patient_id in clinical:
            raise DatasetValueError(f"{path}: patient {patient_id} is listed twice; keep one row per patient.")
        event = parse_int(row["deadstatus.event"], "deadstatus.event")
        if event not in (None, 0, 1):
            raise DatasetValueError(f"{row_id}: deadstatus.event must be 1 (dead) or 0 (censored), got {event}")
        clinical[patient_id] = {
            "age": parse_float(row["age"], "age"),
            "gender": class_label_value(row["gender"], GENDER_NAMES, "gender", row_id),
            "histology": class_label_value(row["Histology"], HISTOLOGY_NAMES, "Histology", row_id),
            "t_stage": _stage_label(row["clinical.T.Stage"], "T", T_STAGE_NAMES, "clinical.T.Stage", row_id),
            "n_stage": _stage_label(row["Clinical.N.Stage"], "N", N_STAGE_NAMES, "Clinical.N.Stage", row_id),
            "m_stage": _stage_label(row["Clinical.M.Stage"], "M", M_STAGE_NAMES, "Clinical.M.Stage", row_id),
            "overall_stage": class_label_value(row["Overall.Stage"], OVERALL_STAGE_NAMES, "Overall.Stage", row_id),
            "survival_days": parse_float(row["Survival.time"], "Survival.time"),
            "event": event,
        }
    return clinical


def segment_labels(segmentation):
    """Segment number -> label of a DICOM SEG dataset."""
    return {int(item.SegmentNumber): str(item.SegmentLabel).strip() for item in segmentation.SegmentSequence}


def read_segment_mask(segmentation, volume, segment_label):
    """Boolean mask of one segment of a DICOM SEG on the grid of `volume` (None if the SEG has no such segment).

    Each frame is placed through its own ImagePositionPatient and the shared orientation and pixel spacing, so
    frame order and a SEG grid that differs from the image do not matter. Returns `(mask, voxels_outside)`.
    """
    numbers = [
        number for number, label in segment_labels(segmentation).items() if label.lower() == segment_label.lower()
    ]
    if not numbers:
        return None, 0
    frames = segmentation.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    shared = None
    if "SharedFunctionalGroupsSequence" in segmentation:
        shared = segmentation.SharedFunctionalGroupsSequence[0]
    mask = np.zeros(volume.array.shape, dtype=bool)
    shape = np.asarray(mask.shape)
    outside = 0
    for frame_index, item in enumerate(segmentation.PerFrameFunctionalGroupsSequence):
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) not in numbers:
            continue
        rows, columns = np.nonzero(frames[frame_index])
        if rows.size == 0:
            continue
        orientation_group = item if "PlaneOrientationSequence" in item else shared
        measures_group = item if "PixelMeasuresSequence" in item else shared
        orientation = orientation_group.PlaneOrientationSequence[0].ImageOrientationPatient
        orientation = np.asarray([float(value) for value in orientation])
        row_spacing, column_spacing = (float(value) for value in measures_group.PixelMeasuresSequence[0].PixelSpacing)
        position = np.asarray([float(value) for value in item.PlanePositionSequence[0].ImagePositionPatient])
        # The frame's pixel grid maps linearly into the array: index = start + column * per_column + row * per_row.
        start = np.asarray(volume_index_of_world(position, volume))
        per_column = np.asarray(volume_index_of_world(position + column_spacing * orientation[:3], volume)) - start
        per_row = np.asarray(volume_index_of_world(position + row_spacing * orientation[3:], volume)) - start
        indices = np.rint(start[None] + columns[:, None] * per_column[None] + rows[:, None] * per_row[None]).astype(int)
        inside = np.all((indices >= 0) & (indices < shape[None]), axis=1)
        outside += int((~inside).sum())
        indices = indices[inside]
        mask[indices[:, 0], indices[:, 1], indices[:, 2]] = True
    return mask, outside


def read_segment_mask_from_file(segmentation, path, volume, segment_label):
    """`read_segment_mask` with a SEG whose structure is damaged reported as DatasetLayoutError naming the file."""
    try:
        return read_segment_mask(segmentation, volume, segment_label)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as error:
        raise DatasetLayoutError(f"{path} is a malformed DICOM SEG ({error!r}); re-download that series.") from error


def rtstruct_roi_names(path):
    """The ROI names of an RTSTRUCT file, in file order."""
    header = read_dicom_header(path)
    return [str(item.ROIName).strip() for item in header.get("StructureSetROISequence", [])]


def rtstruct_roi_mask(path, volume, roi_name):
    """Boolean mask of one RTSTRUCT ROI on the grid of `volume` (None if the file has no such ROI).

    Each closed planar contour is mapped from world mm into the array and filled on its slice (voxel centres
    inside the polygon); several contours on one slice combine by exclusive or, so holes stay empty.
    Returns `(mask, points_outside)`.
    """
    from matplotlib.path import Path as Polygon

    structure_set = read_dicom_header(path)
    numbers = [
        int(item.ROINumber)
        for item in structure_set.get("StructureSetROISequence", [])
        if str(item.ROIName).strip().lower() == roi_name.lower()
    ]
    if not numbers:
        return None, 0
    mask = np.zeros(volume.array.shape, dtype=bool)
    outside = 0
    for roi_contour in structure_set.get("ROIContourSequence", []):
        if int(roi_contour.ReferencedROINumber) not in numbers:
            continue
        for contour in roi_contour.get("ContourSequence", []):
            points = np.asarray([float(value) for value in contour.ContourData]).reshape(-1, 3)
            indices = np.asarray([volume_index_of_world(point, volume) for point in points])
            z_index = int(np.rint(indices[:, 0].mean()))
            if not 0 <= z_index < mask.shape[0]:
                outside += len(points)
                continue
            polygon = Polygon(indices[:, [2, 1]])  # (x, y) of the slice
            x_low, y_low = np.maximum(np.floor(indices[:, [2, 1]].min(axis=0)).astype(int), 0)
            x_high = min(int(np.ceil(indices[:, 2].max())), mask.shape[2] - 1)
            y_high = min(int(np.ceil(indices[:, 1].max())), mask.shape[1] - 1)
            if x_high < x_low or y_high < y_low:
                outside += len(points)
                continue
            grid_y, grid_x = np.mgrid[y_low : y_high + 1, x_low : x_high + 1]
            inside = polygon.contains_points(np.column_stack([grid_x.ravel(), grid_y.ravel()])).reshape(grid_x.shape)
            mask[z_index, y_low : y_high + 1, x_low : x_high + 1] ^= inside
    return mask, outside


def mask_bounding_box(mask):
    """Inclusive [[z0, z1], [y0, y1], [x0, x1]] of a non-empty mask."""
    box = []
    for axis in range(3):
        other = tuple(index for index in range(3) if index != axis)
        present = np.nonzero(mask.any(axis=other))[0]
        box.append([int(present[0]), int(present[-1])])
    return box


def tumour_mask_columns(prefix, volume, mask, series_uid, include_mask_file):
    """`<prefix>_volume_ml`, `<prefix>_bbox` and, for raw configs, `<prefix>_mask` (NIfTI on the CT grid).

    All are None when there is no mask or it is empty on this grid.
    """
    has_tumour = mask is not None and bool(mask.any())
    columns = {
        f"{prefix}_volume_ml": float(mask.sum() * np.prod(volume.spacing) / 1000.0) if has_tumour else None,
        f"{prefix}_bbox": mask_bounding_box(mask) if has_tumour else None,
    }
    if include_mask_file:
        columns[f"{prefix}_mask"] = (
            {"bytes": ct_volume_nifti_bytes(volume, mask.astype(np.uint8)), "path": f"{series_uid}_{prefix}.nii.gz"}
            if has_tumour
            else None
        )
    return columns


class NsclcRadiomics(TciaCollectionBuilder):
    """NSCLC-Radiomics (Lung1): 422 NSCLC patients treated with radiotherapy; CT + GTV + clinical outcome."""

    COLLECTION = "NSCLC-Radiomics"
    DATASET_NAME = "NSCLC-Radiomics"
    HOMEPAGE = "https://www.cancerimagingarchive.net/collection/nsclc-radiomics/"
    LICENSE = "UNCONFIRMED (CC BY 3.0 according to neuro-ml/amid); check the TCIA collection page"
    CITATION = (
        "Aerts HJWL et al. Decoding tumour phenotype by noninvasive imaging using a quantitative radiomics approach. "
        "Nat Commun 5, 4006 (2014). Data: doi:10.7937/K9/TCIA.2015.PF0M9REI"
    )
    DESCRIPTION = __doc__
    VERSION = datasets.Version("1.0.0")

    def _label_features(self):
        return {
            "age": datasets.Value("float32"),
            "gender": datasets.ClassLabel(names=GENDER_NAMES),
            "histology": datasets.ClassLabel(names=HISTOLOGY_NAMES),
            "t_stage": datasets.ClassLabel(names=T_STAGE_NAMES),
            "n_stage": datasets.ClassLabel(names=N_STAGE_NAMES),
            "m_stage": datasets.ClassLabel(names=M_STAGE_NAMES),
            "overall_stage": datasets.ClassLabel(names=OVERALL_STAGE_NAMES),
            "survival_days": datasets.Value("float32"),
            "event": datasets.Value("int8"),
        }

    def _annotation_features(self):
        features = {
            "gtv_volume_ml": datasets.Value("float32"),
            "gtv_bbox": datasets.List(datasets.List(datasets.Value("int32"), length=2), length=3),
            "gtv_source": datasets.Value("string"),
            "segment_labels": datasets.List(datasets.Value("string")),
            "rtstruct_roi_names": datasets.List(datasets.Value("string")),
        }
        if not is_preprocessed_config(self.config):
            features["gtv_mask"] = datasets.Nifti()
        return features

    def _read_clinical(self, data_dir, collection_folder):
        from .tcia import find_table

        path = find_table(
            data_dir, collection_folder, CLINICAL_TABLE_PATTERNS, "the Lung1 clinical CSV", self.config.clinical_table
        )
        return read_lung1_clinical(path)

    def _annotations(self, patient_id, series, volume, patient_series):
        key = f"{patient_id}/{series.series_uid}"
        ct_files = dicom_files(series.folder)
        frame_of_reference = str(read_dicom_header(ct_files[0]).get("FrameOfReferenceUID", ""))
        labels, mask, outside = [], None, 0
        for item in patient_series:
            if item.modality != "SEG":
                continue
            for path in dicom_files(item.folder):
                segmentation = read_dicom_dataset(path)
                seg_frame_of_reference = str(segmentation.get("FrameOfReferenceUID", ""))
                if frame_of_reference and seg_frame_of_reference and seg_frame_of_reference != frame_of_reference:
                    continue
                labels.extend(label for label in segment_labels(segmentation).values() if label not in labels)
                if mask is None:
                    mask, outside = read_segment_mask_from_file(segmentation, path, volume, TUMOUR_SEGMENT_LABEL)
        if outside:
            logger.warning(
                "%s: %d %s voxel(s) of the SEG lie outside the CT grid and were dropped",
                key,
                outside,
                TUMOUR_SEGMENT_LABEL,
            )
        source = "SEG" if mask is not None else None
        roi_names = []
        for item in patient_series:
            if item.modality == "RTSTRUCT":
                for path in dicom_files(item.folder):
                    roi_names.extend(rtstruct_roi_names(path))
                    if mask is None:
                        # A download without the SEG (e.g. only CT and RTSTRUCT selected) still has the GTV as contours.
                        mask, outside = rtstruct_roi_mask(path, volume, TUMOUR_SEGMENT_LABEL)
                        source = "RTSTRUCT" if mask is not None else None
                        if outside:
                            logger.warning("%s: %d RTSTRUCT contour point(s) lie outside the CT grid", key, outside)
        has_tumour = mask is not None and bool(mask.any())
        if mask is not None and not has_tumour:
            logger.warning("%s: the %s segment is empty on this CT grid", key, TUMOUR_SEGMENT_LABEL)
        return {
            **tumour_mask_columns(
                "gtv", volume, mask, series.series_uid, include_mask_file=not is_preprocessed_config(self.config)
            ),
            "gtv_source": source if has_tumour else None,
            "segment_labels": labels,
            "rtstruct_roi_names": roi_names,
        }

    def _clinical_text_fields(self, labels):
        return {
            "Sex": labels["gender"],
            "Age": None if labels["age"] is None else int(round(labels["age"])),
            "Histology": labels["histology"],
            "Clinical T stage": labels["t_stage"],
            "Clinical N stage": labels["n_stage"],
            "Clinical M stage": labels["m_stage"],
            "Overall stage": labels["overall_stage"],
        }
