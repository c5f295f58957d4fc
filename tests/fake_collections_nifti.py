"""Writers of tiny fake downloads of DLCSD24, DeepLesion, UCSF-PDGM and CT-RATE that copy the real layouts
(file names, nesting, CSV headers, value formats) with small volumes in the real file formats."""

import csv
import gzip
from pathlib import Path

import numpy as np

from datasets_scripts.phantoms import generate_chest_phantom


PHANTOM_SHAPE = (24, 64, 64)


def write_csv(path, header, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_nifti_ras_order(path, hu_lps, spacing_zyx, origin_lps_xyz):
    """Write a (z, y, x) LPS volume as a NIfTI whose voxels are stored in RAS order (x and y flipped on disk)."""
    import nibabel

    spacing_x, spacing_y, spacing_z = spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]
    depth, height, width = hu_lps.shape
    data = np.ascontiguousarray(hu_lps.transpose(2, 1, 0)[::-1, ::-1, :])
    # RAS world of stored voxel (0, 0, 0) = LPS voxel (width-1, height-1, 0), negated in x and y.
    last_x = origin_lps_xyz[0] + (width - 1) * spacing_x
    last_y = origin_lps_xyz[1] + (height - 1) * spacing_y
    affine = np.array(
        [
            [spacing_x, 0, 0, -last_x],
            [0, spacing_y, 0, -last_y],
            [0, 0, spacing_z, origin_lps_xyz[2]],
            [0, 0, 0, 1],
        ],
        dtype=np.float64,
    )
    image = nibabel.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, str(path))
    return path


def lps_world_of_voxel(index_zyx, spacing_zyx, origin_lps_xyz):
    z, y, x = index_zyx
    return (
        origin_lps_xyz[0] + x * spacing_zyx[2],
        origin_lps_xyz[1] + y * spacing_zyx[1],
        origin_lps_xyz[2] + z * spacing_zyx[0],
    )


# ------------------------------------------------------------------------------------------------------------
# DLCSD24
# ------------------------------------------------------------------------------------------------------------

DLCSD24_HEADER = [
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
    "benchmark_split",
]


def write_fake_dlcsd24(root, patient_count=5, splits=("train", "train", "val", "test", "")):
    """Fake DLCSD24 download: `subset01/`, `subset02/` with `DLCS_NNNN.nii.gz`, annotation and metadata tables.

    Returns the expected nodules per patient: {patient_id: [dict(center_voxel, malignancy, nodule_id)]}.
    """
    root = Path(root)
    rows, expected, metadata_rows = [], {}, []
    for index in range(1, patient_count + 1):
        patient_id = f"DLCS_{index:04d}"
        phantom = generate_chest_phantom(100 + index, shape=PHANTOM_SHAPE)
        origin = (-150.0 - index, -120.0, -300.0 + 2 * index)
        subset = f"subset{1 + (index - 1) // 3:02d}"
        write_nifti_ras_order(root / subset / f"{patient_id}.nii.gz", phantom.hu, phantom.spacing, origin)
        nodules = []
        for number, finding in enumerate(f for f in phantom.findings if f["kind"] in ("nodule", "mass")):
            world = lps_world_of_voxel(finding["center_voxel"], phantom.spacing, origin)
            malignant = int(finding["role"] == "primary")
            nodule_id = f"{patient_id}_{number + 1:02d}"
            rows.append(
                [
                    patient_id,
                    nodule_id,
                    f"{patient_id}.nii.gz",
                    f"{world[0]:.2f}",
                    f"{world[1]:.2f}",
                    f"{world[2]:.2f}",
                    f"{finding['diameter_mm']:.2f}",
                    f"{finding['diameter_mm']:.2f}",
                    f"{finding['diameter_mm']:.2f}",
                    str(malignant),
                    splits[(index - 1) % len(splits)],
                ]
            )
            nodules.append({"nodule_id": nodule_id, "center_voxel": finding["center_voxel"], "malignancy": malignant})
        expected[patient_id] = nodules
        metadata_rows.append([patient_id, "F" if index % 2 else "M", str(55 + index)])
    write_csv(root / "DLCSD24_Annotations.csv", DLCSD24_HEADER, rows)
    write_csv(root / "DLCSD24_metadata_v1.1.csv", ["patient-id", "sex", "age"], metadata_rows)
    return expected


# ------------------------------------------------------------------------------------------------------------
# DeepLesion
# ------------------------------------------------------------------------------------------------------------

DL_INFO_HEADER = [
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
]


def write_uint16_png(path, pixels):
    """A 16-bit greyscale PNG, as DeepLesion stores its slices."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(pixels.astype(np.uint16)))
    if image.mode != "I;16":
        image = Image.fromarray(pixels.astype(np.uint16), mode="I;16")
    image.save(path)
    return path


def _vector(values):
    return ", ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def write_fake_deeplesion(root, series_specs=None):
    """Fake DeepLesion: `Images_png/<patient>_<study>_<series>/<NNN>.png` (uint16, HU + 32768) and `DL_info.csv`.

    Each spec: (patient, study, series, first_slice, slice_count, split, lesions) with lesions a list of
    (key_slice, box x1 y1 x2 y2, type). Returns {file_name: (volume HU in slice order, spec, lesions)}.
    """
    root = Path(root)
    if series_specs is None:
        series_specs = [
            (1, 1, 1, 30, 12, 1, [(35, (20.5, 22.0, 30.0, 31.5), -1), (35, (40.0, 40.0, 48.0, 47.0), -1)]),
            (1, 1, 2, 100, 12, 1, [(104, (10.0, 10.0, 20.0, 20.0), -1)]),
            (2, 1, 1, 5, 12, 2, [(9, (30.0, 12.0, 38.0, 22.0), 5)]),
            (3, 2, 1, 50, 12, 3, [(55, (25.0, 25.0, 35.0, 35.0), 3)]),
        ]
    rows, expected = [], {}
    for patient, study, series, first_slice, count, split, lesions in series_specs:
        folder = f"{patient:06d}_{study:02d}_{series:02d}"
        phantom = generate_chest_phantom(1000 + patient * 10 + series, shape=(count, 64, 64))
        # Slice numbers run from head to foot: slice `first_slice` is the top (largest z) of the LPS volume.
        hu_in_slice_order = phantom.hu[::-1]
        for offset in range(count):
            write_uint16_png(
                root / "Images_png" / folder / f"{first_slice + offset:03d}.png",
                hu_in_slice_order[offset].astype(np.int32) + 32768,
            )
        by_key = {}
        for key_slice, box, lesion_type in lesions:
            by_key.setdefault(key_slice, []).append((box, lesion_type))
            x1, y1, x2, y2 = box
            rows.append(
                [
                    f"{folder}_{key_slice:03d}.png",
                    patient,
                    study,
                    series,
                    key_slice,
                    _vector([x1, y1, x2, y2, x1, y2, x2, y1]),
                    _vector([x1, y1, x2, y2]),
                    _vector([x2 - x1, y2 - y1]),
                    _vector([0.5, 0.4, 0.6]),
                    lesion_type,
                    0,
                    _vector([first_slice, first_slice + count - 1]),
                    _vector([phantom.spacing[2], phantom.spacing[1], phantom.spacing[0]]),
                    "64, 64",
                    "-175, 275",
                    "F" if patient % 2 else "M",
                    "NaN" if patient == 3 else 50 + patient,
                    split,
                ]
            )
        for key_slice, lesion_list in by_key.items():
            expected[f"{folder}_{key_slice:03d}.png"] = (
                phantom.hu,
                (patient, study, series, first_slice, count, split),
                lesion_list,
            )
    write_csv(root / "DL_info.csv", DL_INFO_HEADER, rows)
    return expected


# ------------------------------------------------------------------------------------------------------------
# UCSF-PDGM
# ------------------------------------------------------------------------------------------------------------

UCSF_HEADER = [
    "ID",
    "Sex",
    "Age at MRI",
    "WHO CNS Grade",
    "Final pathologic diagnosis (WHO 2021)",
    "MGMT status",
    "MGMT index",
    "1p/19q",
    "IDH",
    "1-dead 0-alive",
    "OS",
    "EOR",
    "Biopsy prior to imaging",
    "BraTS21 ID",
    "BraTS21 Segmentation Cohort",
    "BraTS21 MGMT Cohort",
]
UCSF_SUFFIXES = ("T1", "T1c", "T2", "FLAIR", "brain_segmentation", "tumor_segmentation")


def _brain_volume(seed, shape=(20, 32, 28)):
    """A small brain-like MRI volume (float32, LPS) with a tumour, plus brain and tumour label maps."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, size) for size in shape], indexing="ij")
    brain = (z / 0.85) ** 2 + (y / 0.9) ** 2 + (x / 0.8) ** 2 <= 1
    centre = rng.uniform(-0.3, 0.3, size=3)
    tumour = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= 0.08) & brain
    intensity = np.where(brain, 400 + 80 * rng.standard_normal(shape), 0).astype(np.float32)
    intensity[tumour] += 300
    labels = np.zeros(shape, dtype=np.uint8)
    labels[tumour] = 4
    return intensity, brain.astype(np.uint8), labels


def write_fake_ucsf_pdgm(root, rows=None, version="v5"):
    """Fake UCSF-PDGM: `PKG - UCSF-PDGM-v3-20230111/UCSF-PDGM-v3/UCSF-PDGM-0004_nifti/UCSF-PDGM-0004_<suffix>.nii.gz`
    with the metadata CSV using 3-digit ids. Returns the rows written (dicts)."""
    import nibabel

    root = Path(root)
    package = root / "PKG - UCSF-PDGM-v3-20230111" / "UCSF-PDGM-v3"
    if rows is None:
        rows = [
            {
                "ID": "UCSF-PDGM-004",
                "Sex": "M",
                "Age at MRI": "66",
                "WHO CNS Grade": "4",
                "Final pathologic diagnosis (WHO 2021)": "Glioblastoma, IDH-wildtype",
                "MGMT status": "negative",
                "MGMT index": "0",
                "1p/19q": "",
                "IDH": "wildtype",
                "1-dead 0-alive": "1",
                "OS": "389",
                "EOR": "STR",
            },
            {
                "ID": "UCSF-PDGM-005",
                "Sex": "F",
                "Age at MRI": "40",
                "WHO CNS Grade": "2",
                "Final pathologic diagnosis (WHO 2021)": "Oligodendroglioma, IDH-mutant, 1p/19q-codeleted",
                "MGMT status": "positive",
                "MGMT index": "12",
                "1p/19q": "Co-deletion",
                "IDH": "IDH1 p.R132H",
                "1-dead 0-alive": "0",
                "OS": "2100",
                "EOR": "GTR",
            },
            {
                "ID": "UCSF-PDGM-012",
                "Sex": "F",
                "Age at MRI": "55",
                "WHO CNS Grade": "3",
                "Final pathologic diagnosis (WHO 2021)": "Astrocytoma, IDH-mutant",
                "MGMT status": "unknown",
                "MGMT index": "unknown",
                "1p/19q": "intact",
                "IDH": "mutated (NOS)",
                "1-dead 0-alive": "0",
                "OS": "",
                "EOR": "",
            },
            {
                "ID": "UCSF-PDGM-120",
                "Sex": "M",
                "Age at MRI": "71",
                "WHO CNS Grade": "4",
                "Final pathologic diagnosis (WHO 2021)": "Glioblastoma, IDH-wildtype",
                "MGMT status": "indeterminate",
                "MGMT index": "",
                "1p/19q": "",
                "IDH": "wildtype",
                "1-dead 0-alive": "1",
                "OS": "120",
                "EOR": "biopsy",
            },
            {
                "ID": "UCSF-PDGM-120_FU",
                "Sex": "M",
                "Age at MRI": "71",
                "WHO CNS Grade": "4",
                "Final pathologic diagnosis (WHO 2021)": "Glioblastoma, IDH-wildtype",
                "MGMT status": "indeterminate",
                "MGMT index": "",
                "1p/19q": "",
                "IDH": "wildtype",
                "1-dead 0-alive": "1",
                "OS": "120",
                "EOR": "biopsy",
            },
        ]
    for number, row in enumerate(rows):
        identifier = row["ID"]
        digits, _, follow_up = identifier.removeprefix("UCSF-PDGM-").partition("_")
        folder_id = f"UCSF-PDGM-{int(digits):04d}" + (f"_{follow_up}" if follow_up else "")
        intensity, brain, tumour = _brain_volume(number)
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-stored data: RAS affine with flipped x and y
        for suffix in UCSF_SUFFIXES:
            data = {"brain_segmentation": brain, "tumor_segmentation": tumour}.get(suffix)
            if data is None:
                data = intensity * (1.0 + 0.1 * UCSF_SUFFIXES.index(suffix))
            image = nibabel.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
            folder = package / f"{folder_id}_nifti"
            folder.mkdir(parents=True, exist_ok=True)
            nibabel.save(image, str(folder / f"{folder_id}_{suffix}.nii.gz"))
    full_rows = [{column: row.get(column, "") for column in UCSF_HEADER} for row in rows]
    write_csv(
        package.parent / f"UCSF-PDGM-metadata_{version}.csv",
        UCSF_HEADER,
        [[row[column] for column in UCSF_HEADER] for row in full_rows],
    )
    return full_rows


# ------------------------------------------------------------------------------------------------------------
# CT-RATE
# ------------------------------------------------------------------------------------------------------------

CT_RATE_FINDINGS = [
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
]
CT_RATE_METADATA_HEADER = (
    "VolumeName,Manufacturer,SeriesDescription,ManufacturerModelName,PatientSex,PatientAge,ReconstructionDiameter,"
    "DistanceSourceToDetector,DistanceSourceToPatient,GantryDetectorTilt,TableHeight,RotationDirection,ExposureTime,"
    "XRayTubeCurrent,Exposure,FilterType,GeneratorPower,FocalSpots,ConvolutionKernel,PatientPosition,RevolutionTime,"
    "SingleCollimationWidth,TotalCollimationWidth,TableSpeed,TableFeedPerRotation,SpiralPitchFactor,"
    "DataCollectionCenterPatient,ReconstructionTargetCenterPatient,ExposureModulationType,CTDIvol,ImagePositionPatient,"
    "ImageOrientationPatient,SliceLocation,SamplesPerPixel,PhotometricInterpretation,Rows,Columns,XYSpacing,"
    "RescaleIntercept,RescaleSlope,RescaleType,NumberofSlices,ZSpacing,StudyDate"
).split(",")
CT_RATE_REPORT_HEADER = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]


def write_blank_header_nifti(path, stored_xyz):
    """A NIfTI with an identity affine and unit pixdim, as the original CT-RATE volumes were published."""
    import nibabel

    image = nibabel.Nifti1Image(np.ascontiguousarray(stored_xyz), np.eye(4))
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, str(path))
    return path


def write_fake_ct_rate(root, volumes=None, fixed_volumes=()):
    """Fake CT-RATE: `dataset/{train,valid}/<split>_<i>/<split>_<i>_<a>/<split>_<i>_<a>_<k>.nii.gz` (raw stored values,
    blank headers), the reports, labels and metadata CSVs (`validation_` vs `valid_` names).

    `volumes`: names such as `train_1_a_1`; `fixed_volumes`: names also written to `train_fixed/` in HU with geometry.
    Returns {volume name: dict(hu=LPS HU array, spacing=(z, y, x), labels, report parts)}.
    """
    root = Path(root) / "dataset"
    if volumes is None:
        volumes = ["train_1_a_1", "train_1_a_2", "train_2_a_1", "train_3_b_1", "valid_1_a_1", "valid_2_a_1"]
    expected = {}
    reports = {"train": [], "valid": []}
    labels = {"train": [], "valid": []}
    metadata = {"train": [], "valid": []}
    for number, name in enumerate(volumes):
        split, patient, scan, reconstruction = name.split("_")
        phantom = generate_chest_phantom(2000 + number, shape=PHANTOM_SHAPE)
        slope, intercept = 1.0, -1024.0
        stored = ((phantom.hu.astype(np.float32) - intercept) / slope).astype(np.int16)  # raw values, air near 0
        stored_xyz = stored.transpose(2, 1, 0)  # data[i, j, k] = (x, y, z) in LPS order, per the public loaders
        folder = root / split / f"{split}_{patient}" / f"{split}_{patient}_{scan}"
        write_blank_header_nifti(folder / f"{name}.nii.gz", stored_xyz)
        if name in fixed_volumes:
            fixed_folder = root / f"{split}_fixed" / f"{split}_{patient}" / f"{split}_{patient}_{scan}"
            write_nifti_ras_order(
                fixed_folder / f"{name}.nii.gz", phantom.hu, phantom.spacing, (-160.0, -170.0, -300.0)
            )
        finding_labels = [int((number + index) % 5 == 0) for index in range(len(CT_RATE_FINDINGS))]
        finding_labels[CT_RATE_FINDINGS.index("Lung nodule")] = 1
        clinical = "Not given." if number % 2 else "Cough for two weeks."
        report = [
            f"{name}.nii.gz",
            clinical,
            "Non-contrast chest CT.",
            phantom.report.split("IMPRESSION:")[0].replace("FINDINGS:", "").strip(),
            "Lung nodule.",
        ]
        reports[split].append(report)
        labels[split].append([f"{name}.nii.gz", *finding_labels])
        zspacing = f"{phantom.spacing[0]}"
        row = {column: "" for column in CT_RATE_METADATA_HEADER}
        row.update(
            {
                "VolumeName": f"{name}.nii.gz",
                "Manufacturer": "SIEMENS",
                "PatientSex": "M" if number % 2 else "F",
                "PatientAge": f"{30 + number:03d}Y",
                "ImagePositionPatient": "[-166, 9, 56.2998657]",
                "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
                "XYSpacing": f"[{phantom.spacing[2]}, {phantom.spacing[1]}]",
                "RescaleIntercept": f"{intercept:g}",
                "RescaleSlope": f"{slope:g}",
                "RescaleType": "HU",
                "NumberofSlices": str(phantom.hu.shape[0]),
                "ZSpacing": zspacing,
                "StudyDate": "20210427",
                "Rows": "64",
                "Columns": "64",
            }
        )
        metadata[split].append([row[column] for column in CT_RATE_METADATA_HEADER])
        expected[name] = {"hu": phantom.hu, "spacing": phantom.spacing, "labels": finding_labels, "report": report}
    write_csv(root / "radiology_text_reports" / "train_reports.csv", CT_RATE_REPORT_HEADER, reports["train"])
    write_csv(root / "radiology_text_reports" / "validation_reports.csv", CT_RATE_REPORT_HEADER, reports["valid"])
    write_csv(
        root / "multi_abnormality_labels" / "train_predicted_labels.csv",
        ["VolumeName", *CT_RATE_FINDINGS],
        labels["train"],
    )
    write_csv(
        root / "multi_abnormality_labels" / "valid_predicted_labels.csv",
        ["VolumeName", *CT_RATE_FINDINGS],
        labels["valid"],
    )
    write_csv(root / "metadata" / "train_metadata.csv", CT_RATE_METADATA_HEADER, metadata["train"])
    write_csv(root / "metadata" / "validation_metadata.csv", CT_RATE_METADATA_HEADER, metadata["valid"])
    return expected


def write_corrupt_gzip(path):
    """A file with a NIfTI name whose content is truncated gzip: a corrupt download."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(gzip.compress(b"not a nifti at all" * 10)[:25])
    return path
