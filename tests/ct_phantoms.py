"""Small geometric CT phantoms for the CT pipeline tests, and writers of them as real DICOM series.

A chest: air around an elliptic body of soft tissue, two ellipsoid lungs (-850 HU), spine, trachea above the lungs,
a gas bubble in the stomach below them, and optional masses touching the chest wall or in the mediastinum. A head:
skull, brain and small sinus air, no lungs. Arrays are int16 HU, axes (z, y, x) LPS, z towards the head.
"""

import datetime
from pathlib import Path

import numpy as np


CHEST_SHAPE = (48, 128, 128)
CHEST_SPACING = (5.0, 2.5, 2.5)  # (z, y, x) mm: a 240 x 320 x 320 mm field of view
LUNG_CENTRE_X_MM = 75.0  # distance of each lung's centre from the midline
LUNG_SEMI_AXES_MM = (80.0, 75.0, 55.0)  # (z, y, x)
LUNG_CENTRE_Z_MM = 130.0
MASS_RADIUS_MM = 15.0


def _grid_mm(shape, spacing):
    """Coordinates (mm) of voxel centres relative to the centre of the field of view in y and x, from the bottom in z."""
    z = (np.arange(shape[0]) + 0.5) * spacing[0]
    y = (np.arange(shape[1]) + 0.5) * spacing[1] - shape[1] * spacing[1] / 2
    x = (np.arange(shape[2]) + 0.5) * spacing[2] - shape[2] * spacing[2] / 2
    return z[:, None, None], y[None, :, None], x[None, None, :]


def _ellipsoid(grid, centre, semi_axes):
    return sum(((axis - c) / s) ** 2 for axis, c, s in zip(grid, centre, semi_axes)) <= 1.0


def chest_phantom(shape=CHEST_SHAPE, spacing=CHEST_SPACING, masses=(), seed=0, noise_std=15.0):
    """A chest CT phantom; `masses` names tumours to add: "juxtapleural" (touching the right chest wall at the lung's
    widest point) and/or "mediastinal" (in the mediastinum, pressing on the left lung). Returns (hu, tumour_masks)."""
    z, y, x = _grid_mm(shape, spacing)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = ((y / 100.0) ** 2 + (x / 140.0) ** 2 <= 1.0) & (z >= 0)
    hu[np.broadcast_to(body, shape)] = 40.0
    spine = ((y - 70.0) / 15.0) ** 2 + (x / 15.0) ** 2 <= 1.0
    hu[np.broadcast_to(spine, shape)] = 500.0
    lung_masks = []
    for side in (-1, 1):
        lung = _ellipsoid((z, y, x), (LUNG_CENTRE_Z_MM, 0.0, side * LUNG_CENTRE_X_MM), LUNG_SEMI_AXES_MM)
        hu[lung] = -850.0
        lung_masks.append(lung)
    top_of_lungs = LUNG_CENTRE_Z_MM + LUNG_SEMI_AXES_MM[0]
    trachea = ((y + 10.0) ** 2 + x**2 <= 8.0**2) & (z >= top_of_lungs - 40.0)
    hu[np.broadcast_to(trachea, shape)] = -1000.0
    stomach = _ellipsoid((z, y, x), (25.0, -20.0, 60.0), (15.0, 20.0, 20.0))
    hu[stomach] = -1000.0
    tumours = {}
    centres = {
        # centre 15 mm inside the right lung's lateral edge, at its widest point: the mass touches the chest wall
        "juxtapleural": (LUNG_CENTRE_Z_MM, 0.0, -(LUNG_CENTRE_X_MM + LUNG_SEMI_AXES_MM[2] - MASS_RADIUS_MM)),
        # centre in the mediastinum, 5 mm from the left lung's medial edge, so it indents that lung
        "mediastinal": (LUNG_CENTRE_Z_MM, -20.0, LUNG_CENTRE_X_MM - LUNG_SEMI_AXES_MM[2] - MASS_RADIUS_MM + 10.0),
    }
    for name in masses:
        tumour = _ellipsoid((z, y, x), centres[name], (MASS_RADIUS_MM,) * 3)
        hu[tumour] = 45.0
        tumours[name] = tumour
    rng = np.random.default_rng(seed)
    hu += rng.normal(0.0, noise_std, size=shape).astype(np.float32)
    return np.rint(np.clip(hu, -1024, 3071)).astype(np.int16), tumours


def head_phantom(shape=(40, 96, 96), spacing=(4.0, 2.5, 2.5), seed=0):
    """A head CT phantom: skull, brain and two small sinuses; no lungs."""
    z, y, x = _grid_mm(shape, spacing)
    z = z - shape[0] * spacing[0] / 2
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[_ellipsoid((z, y, x), (0, 0, 0), (75.0, 95.0, 75.0))] = 800.0
    hu[_ellipsoid((z, y, x), (0, 0, 0), (68.0, 88.0, 68.0))] = 35.0
    for side in (-1, 1):
        hu[_ellipsoid((z, y, x), (-45.0, -70.0, side * 20.0), (12.0, 10.0, 10.0))] = -1000.0
    hu += np.random.default_rng(seed).normal(0.0, 10.0, size=shape).astype(np.float32)
    return np.rint(np.clip(hu, -1024, 3071)).astype(np.int16)


def write_dicom_series(
    folder,
    hu,
    spacing,
    origin=(-160.0, -160.0, -200.0),
    series_uid=None,
    modality="CT",
    rescale_slope=1.0,
    rescale_intercept=-1024.0,
    patient_name="DOE^JANE",
    patient_id="PAT-0001",
    drop_slices=(),
    seed=0,
):
    """Write `hu` (z, y, x) as a real DICOM series (CT Image Storage, one file per slice, shuffled file names).

    Stored values are (HU - intercept) / slope as uint16; slices go from inferior to superior along +z (LPS).
    Carries identifying fields (`patient_name`, `patient_id`, dates, institution) so tests can check none leak.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    order = np.random.default_rng(seed).permutation(hu.shape[0])
    stored = np.rint((hu.astype(np.float64) - rescale_intercept) / rescale_slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("values do not fit uint16 with this slope/intercept")
    stored = stored.astype(np.uint16)
    for file_number, index in enumerate(order):
        if index in drop_slices:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.FrameOfReferenceUID = frame_uid
        dataset.Modality = modality
        dataset.PatientName = patient_name
        dataset.PatientID = patient_id
        dataset.PatientBirthDate = "19500101"
        dataset.StudyDate = datetime.date(2020, 1, 2).strftime("%Y%m%d")
        dataset.InstitutionName = "General Hospital"
        dataset.AccessionNumber = "ACC123"
        dataset.ReferringPhysicianName = "HOUSE^GREGORY"
        dataset.SeriesDescription = f"{modality} test series"
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        dataset.InstanceNumber = int(index) + 1
        dataset.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + index * spacing[0])]
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        dataset.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        dataset.SliceThickness = float(spacing[0])
        dataset.Rows, dataset.Columns = int(hu.shape[1]), int(hu.shape[2])
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        dataset.RescaleSlope = rescale_slope
        dataset.RescaleIntercept = rescale_intercept
        dataset.PixelData = stored[index].tobytes()
        dataset.save_as(folder / f"IM{file_number:04d}_{int(order[file_number - 1]) * 7 % 97:02d}.dcm", enforce_file_format=True)
    return series_uid
