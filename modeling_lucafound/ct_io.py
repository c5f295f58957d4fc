"""Read any clinical CT (DICOM series, NIfTI, NRRD, MetaImage, SimpleITK image, numpy array) into one canonical form.

The canonical form (`CTVolume`) is an int16 Hounsfield-unit array with axes (z, y, x) in LPS orientation, so a NIfTI
stored RAS and the DICOM series it came from give the same array. SimpleITK and pydicom are imported lazily: this
module is copied into saved model folders, which may only import torch, transformers and numpy at top level.
"""

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import (
    CTFileNotFoundError,
    EmptySeriesFolderError,
    InvalidSpacingError,
    IrregularSliceSpacingError,
    MultipleSeriesError,
    NonFiniteValuesError,
    NotAVolumeError,
    NotCTError,
    UnreadableCTError,
    VolumeTooLargeError,
)


# Largest voxel spacing (mm) accepted on any axis; thicker slices cannot show lung nodules.
MAXIMUM_SPACING_MM = 20.0
# A chest CT always contains air (about -1000 HU); a volume whose minimum is above this is not in Hounsfield units.
HOUNSFIELD_AIR_CHECK = -500
# Relative tolerance for a gap between DICOM slices to count as the series' regular spacing.
SLICE_SPACING_TOLERANCE = 0.2
# Largest angle (degrees) between the slice stacking direction and the slice normal (gantry tilt) that is accepted.
MAXIMUM_TILT_DEGREES = 1.0
CT_IMAGE_STORAGE_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}
IMAGE_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mhd", ".mha")
# Header fields copied into `CTVolume.metadata`: technical only, never patient-identifying.
DICOM_METADATA_FIELDS = {
    "Modality": "modality",
    "SeriesInstanceUID": "series_uid",
    "Manufacturer": "manufacturer",
    "ConvolutionKernel": "convolution_kernel",
    "SliceThickness": "slice_thickness",
    "KVP": "kvp",
}


@dataclass
class CTVolume:
    """A CT volume in canonical form: int16 HU, axes (z, y, x), LPS, with its physical geometry."""

    array: np.ndarray
    spacing: tuple  # (z, y, x) mm
    origin: tuple = (0.0, 0.0, 0.0)  # (x, y, z) LPS mm of voxel (0, 0, 0)
    direction: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self):
        return tuple(self.array.shape)

    def to_sitk(self, array=None):
        """This volume (or another array on the same grid) as a SimpleITK image with its geometry."""
        sitk = _import_simpleitk()
        image = sitk.GetImageFromArray(self.array if array is None else array)
        image.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(v) for row in self.direction for v in row))
        return image

    def index_to_physical(self, index_zyx):
        """LPS (x, y, z) mm of a (z, y, x) voxel index, possibly fractional."""
        offset = np.asarray(index_zyx, dtype=np.float64)[::-1] * np.asarray(self.spacing, dtype=np.float64)[::-1]
        return tuple(np.asarray(self.origin) + np.asarray(self.direction) @ offset)


def _import_simpleitk():
    try:
        import SimpleITK as sitk
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Reading CT files needs SimpleITK: `pip install SimpleITK`.") from error
    return sitk


def _import_pydicom():
    try:
        import pydicom
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Reading DICOM series needs pydicom: `pip install pydicom`.") from error
    return pydicom


def read_ct(source, spacing=None, series_uid=None, max_input_megabytes=None):
    """Read `source` into a canonical `CTVolume` (int16 HU, (z, y, x), LPS).

    `source`: a DICOM series folder, a .nii/.nii.gz/.nrrd/.mhd/.mha file, a SimpleITK image, a numpy array or
    torch tensor with axes (z, y, x) already in LPS (then `spacing` (z, y, x) mm is required), or a `CTVolume`.
    `series_uid` picks one series from a folder holding several. `max_input_megabytes` refuses volumes whose int16
    array would be larger, before reading their pixels where the format allows it.
    """
    if isinstance(source, CTVolume):
        volume = source
        _check_volume(volume.array.shape, volume.spacing, max_input_megabytes, "the given CTVolume")
        return volume
    if isinstance(source, (str, os.PathLike)):
        return _read_path(Path(source), series_uid, max_input_megabytes)
    if type(source).__module__.startswith("torch"):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return _read_array(source, spacing, max_input_megabytes)
    sitk = _import_simpleitk()
    if isinstance(source, sitk.Image):
        return _volume_from_sitk(source, {"source_format": "SimpleITK image"}, max_input_megabytes, "the SimpleITK image")
    raise UnreadableCTError(
        f"Cannot read a CT from a {type(source).__name__}. Pass a DICOM series folder, a .nii/.nii.gz/.nrrd/.mhd "
        "file, a SimpleITK image, or a numpy array (z, y, x) in HU with spacing=(z, y, x) mm."
    )


def read_label(source, spacing=None):
    """Read a label map (e.g. a tumour segmentation) onto the canonical grid exactly as `read_ct` reads its image.

    `source`: a .nii/.nii.gz/.nrrd/.mhd/.mha file, a SimpleITK image, or a (z, y, x) array already in LPS (then
    `spacing` is required). Returns a `CTVolume` whose `array` holds the labels as int16 (no HU checks).
    """
    sitk = _import_simpleitk()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise CTFileNotFoundError(f"Label file {str(path)!r} does not exist.")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise UnreadableCTError(f"Cannot read the label file {str(path)!r}: {_first_line(error)}.") from None
        return _volume_from_sitk(image, {"source": str(path)}, None, repr(str(path)), label=True)
    if isinstance(source, sitk.Image):
        return _volume_from_sitk(source, {}, None, "the label image", label=True)
    array = np.asarray(source)
    _check_volume(array.shape, check_spacing(spacing, "the label array"), None, "the label array")
    return CTVolume(array=array.astype(np.int16, copy=False), spacing=check_spacing(spacing), metadata={})


def check_spacing(spacing, description="the volume"):
    """Return `spacing` as three floats (z, y, x) mm, or raise if it is missing or implausible."""
    if spacing is None:
        raise InvalidSpacingError(
            f"No voxel spacing for {description}. Pass spacing=(z, y, x) in mm, e.g. spacing=(2.5, 0.7, 0.7)."
        )
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InvalidSpacingError(f"Spacing {spacing!r} of {description} is not three numbers (z, y, x) in mm.") from None
    if len(values) != 3:
        raise InvalidSpacingError(f"Spacing {spacing!r} of {description} must have three values (z, y, x) in mm.")
    bad = [s for s in values if not math.isfinite(s) or s <= 0 or s > MAXIMUM_SPACING_MM]
    if bad:
        raise InvalidSpacingError(
            f"Spacing {values} mm (z, y, x) of {description} is not plausible for a CT: every value must be above 0 "
            f"and at most {MAXIMUM_SPACING_MM:g} mm. Check the file header (or the spacing you passed, in z, y, x order)."
        )
    return values


def _check_volume(shape, spacing, max_input_megabytes, description):
    if len(shape) != 3 or min(shape) < 1:
        raise NotAVolumeError(
            f"{description} has shape {tuple(shape)}; a CT volume needs three axes (z, y, x). Pass the whole series "
            "(its folder, or a 3D file), not a single slice or a 2D image."
        )
    if shape[0] < 2:
        raise NotAVolumeError(
            f"{description} has a single slice (shape {tuple(shape)}); a CT volume needs many slices. Pass the folder "
            "of the whole series, not one DICOM file or a 2D image."
        )
    check_spacing(spacing, description)
    if max_input_megabytes is not None:
        megabytes = int(np.prod(shape)) * 2 / 2**20
        if megabytes > max_input_megabytes:
            raise VolumeTooLargeError(
                f"{description} has {tuple(shape)} voxels ({megabytes:.0f} MB as int16), above the memory cap of "
                f"{max_input_megabytes:g} MB. Raise `max_input_megabytes` in the image processor if this machine has "
                "the memory (peak use is about 4x the volume), or resample the scan to coarser spacing first."
            )


def _as_hounsfield_int16(array, description):
    """Round/clip to int16 HU slab by slab (no full-size float copy), refusing NaN/inf; int16 input is not copied."""
    if array.dtype == np.int16:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise UnreadableCTError(f"{description} has dtype {array.dtype}; a CT volume holds numbers in HU.")
    floating = np.issubdtype(array.dtype, np.floating)
    out = np.empty(array.shape, dtype=np.int16)
    for start in range(0, array.shape[0], 16):
        slab = array[start : start + 16]
        if floating:
            if not np.isfinite(slab).all():
                raise NonFiniteValuesError(
                    f"{description} contains NaN or infinite values (first in slices {start}..{start + len(slab) - 1}). "
                    "Replace them (e.g. with -1024 HU outside the field of view) before preprocessing; nothing is "
                    "embedded from undefined voxels."
                )
            slab = np.rint(slab)
        out[start : start + 16] = np.clip(slab, -32768, 32767)
    return out


def check_hounsfield_units(array, description):
    """Refuse a volume without any air: it is not a CT in Hounsfield units (an MRI, or raw stored values)."""
    minimum = int(array.min())
    if minimum > HOUNSFIELD_AIR_CHECK:
        raise NotCTError(
            f"{description} has no voxel below {HOUNSFIELD_AIR_CHECK} HU (minimum {minimum}), so it is not a CT in "
            "Hounsfield units (air is about -1000 HU). If it is a CT stored as raw values, apply RescaleSlope and "
            "RescaleIntercept first; other modalities (MRI, PET) are not supported."
        )


def _read_array(array, spacing, max_input_megabytes):
    description = f"the array of shape {tuple(array.shape)}"
    if array.ndim != 3:
        _check_volume(array.shape, (1, 1, 1), None, description)
    spacing = check_spacing(spacing, description)
    _check_volume(array.shape, spacing, max_input_megabytes, description)
    hounsfield = _as_hounsfield_int16(array, description)
    check_hounsfield_units(hounsfield, description)
    return CTVolume(array=hounsfield, spacing=spacing, metadata={"source_format": "numpy array"})


def _read_path(path, series_uid, max_input_megabytes):
    if not path.exists():
        raise CTFileNotFoundError(f"CT input {str(path)!r} does not exist. Check the path (a DICOM folder or a CT file).")
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid, max_input_megabytes=max_input_megabytes)
    name = path.name.lower()
    if name.endswith(IMAGE_FILE_SUFFIXES):
        return _read_image_file(path, max_input_megabytes)
    if name.endswith(".raw") or name.endswith(".zraw"):
        raise UnreadableCTError(
            f"{str(path)!r} holds only pixel data; pass its .mhd header file (same name, .mhd), which names it."
        )
    if _looks_like_dicom(path):
        # one DICOM file: read it so that a single slice gets the clear single-slice message
        return read_dicom_series(path.parent, series_uid=series_uid, max_input_megabytes=max_input_megabytes, files=[path])
    raise UnreadableCTError(
        f"{str(path)!r} is not a format LuCaFound reads. Supported: a DICOM series folder, .nii, .nii.gz, .nrrd, "
        ".mhd (+ .raw), .mha."
    )


def _looks_like_dicom(path):
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _read_image_file(path, max_input_megabytes):
    sitk = _import_simpleitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    description = f"{str(path)!r}"
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UnreadableCTError(f"Cannot read {description} as an image: {_first_line(error)}. Is the file complete?") from None
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise NotCTError(f"{description} has {reader.GetNumberOfComponents()} components per voxel; a CT has one.")
    shape = tuple(size[::-1])
    _check_volume(shape, reader.GetSpacing()[::-1] if len(size) == 3 else (1, 1, 1), max_input_megabytes, description)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise UnreadableCTError(f"Cannot read the pixels of {description}: {_first_line(error)}. Is the file complete?") from None
    metadata = {"source": str(path), "source_format": _format_name(path)}
    return _volume_from_sitk(image, metadata, max_input_megabytes, description)


def _format_name(path):
    name = path.name.lower()
    for suffix in IMAGE_FILE_SUFFIXES:
        if name.endswith(suffix):
            return suffix.lstrip(".")
    return "unknown"


def _first_line(error):
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


def _volume_from_sitk(image, metadata, max_input_megabytes, description, label=False):
    """Reorient a SimpleITK image to LPS (resampling oblique grids) and turn it into a CTVolume (or a label map)."""
    sitk = _import_simpleitk()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise NotCTError(f"{description} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a CT has one.")
    if image.GetDimension() != 3:
        raise NotAVolumeError(
            f"{description} is {image.GetDimension()}D (size {image.GetSize()}); a CT volume is 3D. Pass the whole "
            "series, not a single slice or a 2D image."
        )
    _check_volume(image.GetSize()[::-1], image.GetSpacing()[::-1], max_input_megabytes, description)
    if not _is_identity(image.GetDirection()):
        image = sitk.DICOMOrient(image, "LPS")
        if not _is_identity(image.GetDirection()):
            image = _resample_to_identity_direction(image, label)
    if label:
        spacing = check_spacing(image.GetSpacing()[::-1], description)
        array = np.ascontiguousarray(sitk.GetArrayFromImage(image).astype(np.int16, copy=False))
        return CTVolume(array=array, spacing=spacing, origin=tuple(image.GetOrigin()), metadata=metadata)
    pixel_type = image.GetPixelID()
    if pixel_type in (sitk.sitkFloat32, sitk.sitkFloat64):
        array = _as_hounsfield_int16(sitk.GetArrayViewFromImage(image), description)
    elif pixel_type == sitk.sitkInt16:
        array = sitk.GetArrayFromImage(image)
    else:
        array = _as_hounsfield_int16(sitk.GetArrayViewFromImage(image), description)
    spacing = check_spacing(image.GetSpacing()[::-1], description)
    check_hounsfield_units(array, description)
    metadata.setdefault("modality", "CT")
    return CTVolume(array=array, spacing=spacing, origin=tuple(image.GetOrigin()), metadata=metadata)


def _is_identity(direction, tolerance=1e-4):
    return bool(np.allclose(np.asarray(direction, dtype=np.float64), np.eye(3).ravel(), atol=tolerance))


def _resample_to_identity_direction(image, label=False):
    """Resample an oblique image onto an LPS-aligned grid with the same spacing covering all of it (linear; nearest
    neighbour for label maps)."""
    sitk = _import_simpleitk()
    size = np.asarray(image.GetSize())
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        for corner in np.array(np.meshgrid(*[[0, s - 1] for s in size], indexing="ij")).reshape(3, -1).T
    ]
    corners = np.asarray(corners)
    low, high = corners.min(0), corners.max(0)
    spacing = np.asarray(image.GetSpacing())
    new_size = [int(math.ceil(extent)) + 1 for extent in (high - low) / spacing]
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
        tuple(low),
        tuple(spacing),
        tuple(np.eye(3).ravel()),
        0.0 if label else -1024.0,
    )


# ----------------------------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------------------------


def read_dicom_series(folder, series_uid=None, max_input_megabytes=None, files=None):
    """Read the CT series in `folder` (searched recursively), sorting slices by position, applying rescale."""
    pydicom = _import_pydicom()
    folder = Path(folder)
    headers = _read_dicom_headers(files if files is not None else _all_files(folder), pydicom)
    if not headers:
        raise EmptySeriesFolderError(
            f"No DICOM image found in {str(folder)!r}. Pass the folder that holds the CT series' .dcm files "
            "(or a .nii.gz/.nrrd/.mhd file)."
        )
    series = {}
    for path, header in headers:
        series.setdefault(str(getattr(header, "SeriesInstanceUID", "unknown")), []).append((path, header))
    ct_series = {uid: items for uid, items in series.items() if _is_ct_series(items)}
    if series_uid is not None:
        if series_uid not in series:
            raise MultipleSeriesError(
                f"Series {series_uid!r} is not in {str(folder)!r}. Series found:\n{_describe_series(series)}"
            )
        if series_uid not in ct_series:
            modality = getattr(series[series_uid][0][1], "Modality", "unknown")
            raise NotCTError(f"Series {series_uid!r} in {str(folder)!r} has modality {modality!r}, not CT.")
        chosen = series_uid
    elif not ct_series:
        modalities = sorted({str(getattr(h, "Modality", "unknown")) for _, h in headers})
        raise NotCTError(
            f"{str(folder)!r} holds no CT image series (modalities found: {', '.join(modalities)}). LuCaFound reads "
            "chest CT only; pass the folder of a CT series."
        )
    elif len(ct_series) > 1:
        raise MultipleSeriesError(
            f"{str(folder)!r} holds {len(ct_series)} CT series; choose one with series_uid=... "
            f"(`--series-uid` on the command line):\n{_describe_series(ct_series)}"
        )
    else:
        chosen = next(iter(ct_series))
    return _assemble_series(series[chosen], folder, max_input_megabytes)


def _all_files(folder):
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            if name.upper() != "DICOMDIR" and not name.startswith("."):
                yield Path(root) / name


def _read_dicom_headers(paths, pydicom):
    headers = []
    for path in paths:
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # not DICOM (or not readable as DICOM): skip, like a viewer would
            continue
        if "ImagePositionPatient" in header or "Modality" in header:
            headers.append((path, header))
    return headers


def _is_ct_series(items):
    header = items[0][1]
    modality = str(getattr(header, "Modality", ""))
    sop_class = str(getattr(header, "SOPClassUID", ""))
    return modality == "CT" or (not modality and sop_class in CT_IMAGE_STORAGE_SOP_CLASSES)


def _describe_series(series):
    lines = []
    for uid, items in series.items():
        header = items[0][1]
        modality = getattr(header, "Modality", "?")
        description = getattr(header, "SeriesDescription", "")
        lines.append(f"  {uid}  modality={modality}  slices={len(items)}  {description}")
    return "\n".join(lines)


def _assemble_series(items, folder, max_input_megabytes):
    sitk = _import_simpleitk()
    description = f"the CT series in {str(folder)!r}"
    items = [(p, h) for p, h in items if "LOCALIZER" not in [str(v).upper() for v in getattr(h, "ImageType", [])]]
    items = [(p, h) for p, h in items if "ImagePositionPatient" in h and "ImageOrientationPatient" in h]
    if len(items) < 2:
        raise NotAVolumeError(
            f"{description} has {len(items)} slice(s) with a position; a CT volume needs many. Pass the folder of the "
            "whole series, not a single DICOM file."
        )
    orientation = np.asarray(items[0][1].ImageOrientationPatient, dtype=np.float64)
    for _, header in items:
        if not np.allclose(np.asarray(header.ImageOrientationPatient, dtype=np.float64), orientation, atol=1e-3):
            raise IrregularSliceSpacingError(f"Slices of {description} have different orientations; it is not one volume.")
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    positions = np.array([np.asarray(h.ImagePositionPatient, dtype=np.float64) for _, h in items])
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    items = [items[i] for i in order]
    positions, distances = positions[order], distances[order]
    gaps = np.diff(distances)
    if np.any(gaps < 1e-3):
        raise IrregularSliceSpacingError(
            f"{description} has {int(np.sum(gaps < 1e-3)) + 1} slices at duplicated positions (several acquisitions in "
            "one series?). Export each acquisition as its own series."
        )
    slice_spacing = float(np.median(gaps))
    irregular = np.abs(gaps - slice_spacing) > SLICE_SPACING_TOLERANCE * slice_spacing
    if np.any(irregular):
        missing = [
            f"{distances[i]:.2f}..{distances[i + 1]:.2f} mm ({int(round(gaps[i] / slice_spacing)) - 1} missing)"
            for i in np.flatnonzero(irregular)
            if gaps[i] > slice_spacing
        ]
        if missing and all(abs(gaps[i] / slice_spacing - round(gaps[i] / slice_spacing)) < SLICE_SPACING_TOLERANCE for i in np.flatnonzero(irregular)):
            raise IrregularSliceSpacingError(
                f"{description} is missing slices: regular spacing is {slice_spacing:.3f} mm but there are gaps at "
                f"{'; '.join(missing)}. Re-export the complete series; an incomplete scan would be embedded distorted."
            )
        raise IrregularSliceSpacingError(
            f"{description} has uneven slice spacing (gaps from {gaps.min():.3f} to {gaps.max():.3f} mm, median "
            f"{slice_spacing:.3f}). Resample it to regular spacing (e.g. to NIfTI) before preprocessing."
        )
    stack = positions[-1] - positions[0]
    cosine = abs(float(stack @ normal)) / max(float(np.linalg.norm(stack)), 1e-9)
    if math.degrees(math.acos(min(1.0, cosine))) > MAXIMUM_TILT_DEGREES:
        raise IrregularSliceSpacingError(
            f"{description} is acquired with gantry tilt (slices shifted along the slice plane). Resample it to an "
            "untilted grid (e.g. with dcm2niix, which corrects tilt) and pass the NIfTI."
        )
    first = items[0][1]
    rows, columns = int(first.Rows), int(first.Columns)
    pixel_spacing = [float(v) for v in getattr(first, "PixelSpacing", [0, 0])]
    shape = (len(items), rows, columns)
    _check_volume(shape, (slice_spacing, pixel_spacing[0], pixel_spacing[1]), max_input_megabytes, description)
    pydicom = _import_pydicom()
    array = np.empty(shape, dtype=np.int16)
    for index, (path, _) in enumerate(items):
        try:
            dataset = pydicom.dcmread(str(path))
            pixels = dataset.pixel_array
        except Exception as error:
            raise UnreadableCTError(
                f"Cannot decode the pixels of {str(path)!r} ({type(error).__name__}: {_first_line(error)}). If it is "
                "compressed, install a decoder (`pip install pylibjpeg pylibjpeg-libjpeg`) or decompress the series."
            ) from None
        if pixels.shape != (rows, columns):
            raise IrregularSliceSpacingError(f"Slice {str(path)!r} is {pixels.shape}, unlike the others {(rows, columns)}.")
        slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
        if slope == 1.0 and float(intercept).is_integer():
            array[index] = np.clip(pixels.astype(np.int32) + int(intercept), -32768, 32767)
        else:
            array[index] = np.clip(np.rint(pixels.astype(np.float32) * slope + intercept), -32768, 32767)
    image = sitk.GetImageFromArray(array)
    del array
    image.SetSpacing((pixel_spacing[1], pixel_spacing[0], slice_spacing))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetDirection(tuple(np.stack([row_direction, column_direction, normal], axis=1).ravel()))
    metadata = {"source": str(folder), "source_format": "dicom", "number_of_slices": len(items)}
    for keyword, name in DICOM_METADATA_FIELDS.items():
        value = getattr(first, keyword, None)
        if value not in (None, ""):
            metadata[name] = float(value) if keyword in ("SliceThickness", "KVP") else str(value)
    return _volume_from_sitk(image, metadata, max_input_megabytes, description)
