"""Writers of small fake TCIA and LUNA16 downloads in the real formats, for the builder tests.

Everything mimics what the NBIA Data Retriever and the LUNA16 archive leave on disk (DATASETS.md sections 0-4):
DICOM CT / RTSTRUCT / SEG / secondary-capture files written with pydicom and real tags (including the
patient-identifying ones, so tests can check they never leave the builders), `metadata.csv` with the real header,
MHD/RAW via SimpleITK, the clinical CSV/XLSX files with their real headers and value spellings, PASCAL VOC XML.
Voxel content comes from `datasets_scripts.phantoms.generate_chest_phantom`, so lung segmentation finds lungs.
"""

import csv
import datetime
from pathlib import Path

import numpy as np


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SOP_CLASS_NAMES = {
    CT_IMAGE_STORAGE: "CT Image Storage",
    SECONDARY_CAPTURE_STORAGE: "Secondary Capture Image Storage",
    RT_STRUCTURE_SET_STORAGE: "RT Structure Set Storage",
    SEGMENTATION_STORAGE: "Segmentation Storage",
}
MANIFEST_HEADER = [
    "Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID", "Study UID",
    "Study Description", "Study Date", "Series Description", "Manufacturer", "Modality", "SOP Class Name",
    "SOP Class UID", "Number of Images", "File Size", "File Location", "Download Timestamp",
]  # fmt: skip
# Identifying values written into every fake header; none of them may appear in a built dataset.
IDENTIFYING_VALUES = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19510304",
    "InstitutionName": "Fake General Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC98765",
    "StudyDate": "20080918",
}


def new_uid():
    from pydicom.uid import generate_uid

    return generate_uid()


def phantom(seed, shape=(24, 64, 64), spacing=None):
    """A tiny life-sized chest phantom (HU int16 LPS (z, y, x), spacing, origin, lesion mask) from `phantoms`."""
    from datasets_scripts.phantoms import generate_chest_phantom

    return generate_chest_phantom(seed, shape=shape, spacing=spacing)


def _file_dataset(sop_class_uid, sop_instance_uid):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class_uid
    dataset.SOPInstanceUID = sop_instance_uid
    return dataset


def _patient_and_study(dataset, patient_id, study_uid, frame_of_reference_uid, study_id="StudyID"):
    dataset.PatientID = patient_id
    for keyword, value in IDENTIFYING_VALUES.items():
        setattr(dataset, keyword, value)
    dataset.PatientSex = "F"
    dataset.StudyInstanceUID = study_uid
    dataset.StudyID = study_id
    dataset.StudyDescription = ""
    dataset.FrameOfReferenceUID = frame_of_reference_uid


def study_folder_name(study_uid, naming, study_description="NA", study_date="09-18-2008", study_id="StudyID"):
    """The retriever's study folder name: the UID (classic) or `MM-DD-YYYY-<StudyID>-<Description>-<5 chars>`."""
    if naming == "classic":
        return study_uid
    return f"{study_date}-{study_id or 'NA'}-{study_description or 'NA'}-{study_uid[-5:]}"


def series_folder_name(series_uid, naming, series_number=0, series_description="NA"):
    """The retriever's series folder name: the UID (classic) or `<number %.6f>-<Description>-<5 chars>`."""
    if naming == "classic":
        return series_uid
    return f"{float(series_number):.6f}-{series_description or 'NA'}-{series_uid[-5:]}"


def slice_file_names(count, style="retriever36"):
    """File names as retrievers write them: `1-001.dcm` (>= 3.6, padded to the count's digits) or `000001.dcm`."""
    if style == "old":
        return [f"{index:06d}.dcm" for index in range(1, count + 1)]
    digits = max(2, len(str(count)))
    return [f"1-{index:0{digits}d}.dcm" for index in range(1, count + 1)]


def write_ct_series(
    folder,
    hu,
    spacing,
    *,
    patient_id,
    study_uid,
    series_uid,
    frame_of_reference_uid,
    origin=(-160.0, -160.0, -300.0),
    series_number=0,
    series_description="",
    manufacturer="SIEMENS",
    file_naming="retriever36",
):
    """Write `hu` (int16 (z, y, x), LPS) as a CT series; returns the per-slice SOPInstanceUIDs (index = z) and headers.

    Files are numbered from the top (highest z) down, so an array built in file-name order would be upside down.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    depth, rows, columns = hu.shape
    stored = (hu.astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16)
    names = slice_file_names(depth, file_naming)
    sop_instance_uids = [new_uid() for _ in range(depth)]
    for instance_index in range(depth):
        z_index = depth - 1 - instance_index
        dataset = _file_dataset(CT_IMAGE_STORAGE, sop_instance_uids[z_index])
        _patient_and_study(dataset, patient_id, study_uid, frame_of_reference_uid)
        dataset.Modality = "CT"
        dataset.Manufacturer = manufacturer
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesNumber = series_number
        dataset.SeriesDescription = series_description
        dataset.InstanceNumber = instance_index + 1
        dataset.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2]) + z_index * spacing[0]]
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        dataset.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        dataset.SliceThickness = float(spacing[0])
        dataset.SliceLocation = float(origin[2]) + z_index * spacing[0]
        dataset.Rows, dataset.Columns = rows, columns
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
        dataset.RescaleIntercept, dataset.RescaleSlope, dataset.RescaleType = -1024, 1, "HU"
        dataset.KVP = 120
        dataset.PixelData = stored[z_index].tobytes()
        dataset.save_as(folder / names[instance_index], enforce_file_format=True)
    return sop_instance_uids


def write_secondary_capture_series(folder, image, *, patient_id, study_uid, series_uid, count=3):
    """A secondary-capture series (fused MPR pictures): pixels but no position, orientation or spacing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sop_instance_uids = []
    for index, name in enumerate(slice_file_names(count)):
        uid = new_uid()
        sop_instance_uids.append(uid)
        dataset = _file_dataset(SECONDARY_CAPTURE_STORAGE, uid)
        _patient_and_study(dataset, patient_id, study_uid, new_uid())
        dataset.Modality = "CT"
        dataset.ConversionType = "WSD"
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesNumber = 1001
        dataset.SeriesDescription = "Fused MPR"
        dataset.InstanceNumber = index + 1
        dataset.Rows, dataset.Columns = image.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
        dataset.PixelData = image.astype(np.uint16).tobytes()
        dataset.save_as(folder / name, enforce_file_format=True)
    return sop_instance_uids


def write_seg(path, masks, spacing, *, origin, patient_id, study_uid, series_uid, frame_of_reference_uid, z_offset=0):
    """A multi-frame binary DICOM SEG (Manufacturer QIICR, as dcmqi writes for NSCLC-Radiomics).

    `masks`: segment label (`GTV-1`, `Lung-Left`, ...) -> bool (z, y, x) mask on the CT grid; one frame per non-empty
    slice per segment. `z_offset` shifts frame positions by whole slices (a mask "of a different shape").
    """
    from pydicom.dataset import Dataset
    from pydicom.pixels import pack_bits
    from pydicom.sequence import Sequence

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = _file_dataset(SEGMENTATION_STORAGE, new_uid())
    _patient_and_study(dataset, patient_id, study_uid, frame_of_reference_uid)
    dataset.Modality = "SEG"
    dataset.Manufacturer = "QIICR"
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = 300
    dataset.SeriesDescription = "Segmentation"
    dataset.InstanceNumber = 1
    dataset.SegmentationType = "BINARY"
    segments, frames, per_frame = Sequence(), [], Sequence()
    for number, (label, mask) in enumerate(masks.items(), start=1):
        segment = Dataset()
        segment.SegmentNumber = number
        segment.SegmentLabel = label
        segment.SegmentAlgorithmType = "MANUAL"
        segments.append(segment)
        for z_index in range(mask.shape[0]):
            if not mask[z_index].any():
                continue
            frames.append(mask[z_index].astype(np.uint8))
            item = Dataset()
            position = Dataset()
            z_mm = float(origin[2]) + (z_index + z_offset) * spacing[0]
            position.ImagePositionPatient = [float(origin[0]), float(origin[1]), z_mm]
            item.PlanePositionSequence = Sequence([position])
            identification = Dataset()
            identification.ReferencedSegmentNumber = number
            item.SegmentIdentificationSequence = Sequence([identification])
            per_frame.append(item)
    dataset.SegmentSequence = segments
    dataset.PerFrameFunctionalGroupsSequence = per_frame
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    measures = Dataset()
    measures.PixelSpacing = [float(spacing[1]), float(spacing[2])]
    measures.SliceThickness = float(spacing[0])
    shared.PixelMeasuresSequence = Sequence([measures])
    dataset.SharedFunctionalGroupsSequence = Sequence([shared])
    rows, columns = next(iter(masks.values())).shape[1:]
    dataset.NumberOfFrames = len(frames)
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 1, 1, 0, 0
    dataset.PixelData = pack_bits(np.stack(frames)) if frames else b""
    dataset.save_as(path, enforce_file_format=True)


def write_rtstruct(path, contours, *, patient_id, study_uid, series_uid, frame_of_reference_uid, referenced_series_uid):
    """An RTSTRUCT (Manufacturer Varian Medical Systems): `contours` maps ROI name -> (N, 3) world-mm polygons."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = _file_dataset(RT_STRUCTURE_SET_STORAGE, new_uid())
    _patient_and_study(dataset, patient_id, study_uid, frame_of_reference_uid)
    dataset.Modality = "RTSTRUCT"
    dataset.Manufacturer = "Varian Medical Systems"
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = 3
    dataset.StructureSetLabel = "RTstruct"
    referenced_frame = Dataset()
    referenced_frame.FrameOfReferenceUID = frame_of_reference_uid
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = referenced_series_uid
    referenced_study = Dataset()
    referenced_study.RTReferencedSeriesSequence = Sequence([referenced_series])
    referenced_frame.RTReferencedStudySequence = Sequence([referenced_study])
    dataset.ReferencedFrameOfReferenceSequence = Sequence([referenced_frame])
    roi_items, contour_items = Sequence(), Sequence()
    for number, (name, polygons) in enumerate(contours.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_of_reference_uid
        roi.ROIName = name
        roi_items.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        items = Sequence()
        for polygon in polygons:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(polygon)
            contour.ContourData = [float(value) for value in np.asarray(polygon).reshape(-1)]
            items.append(contour)
        roi_contour.ContourSequence = items
        contour_items.append(roi_contour)
    dataset.StructureSetROISequence = roi_items
    dataset.ROIContourSequence = contour_items
    dataset.save_as(path, enforce_file_format=True)


def manifest_row(*, collection, series_uid, subject_id, study_uid, modality, sop_class_uid, folder, manifest_folder,
                 series_description="", manufacturer="", number_of_images=1, windows_paths=False):  # fmt: skip
    """One metadata.csv row as the retriever writes it (relative `File Location`, `70.51 MB` sizes, MM-DD-YYYY)."""
    relative = Path(folder).relative_to(manifest_folder)
    location = ".\\" + "\\".join(relative.parts) if windows_paths else "./" + "/".join(relative.parts)
    size_mb = sum(path.stat().st_size for path in Path(folder).iterdir()) / 1e6
    return {
        "Series UID": series_uid, "Collection": collection, "3rd Party Analysis": "NO",
        "Data Description URI": "https://doi.org/10.7937/K9/TCIA.2015.PF0M9REI", "Subject ID": subject_id,
        "Study UID": study_uid, "Study Description": "", "Study Date": "09-18-2008",
        "Series Description": series_description, "Manufacturer": manufacturer, "Modality": modality,
        "SOP Class Name": SOP_CLASS_NAMES[sop_class_uid], "SOP Class UID": sop_class_uid,
        "Number of Images": str(number_of_images), "File Size": f"{size_mb:.2f} MB", "File Location": location,
        "Download Timestamp": datetime.datetime(2024, 5, 2, 10, 11, 12).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3],
    }  # fmt: skip


def write_manifest_metadata(manifest_folder, rows):
    """`manifest-<digits>/metadata.csv` with the retriever's exact header."""
    path = Path(manifest_folder) / "metadata.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_license(collection_folder):
    (Path(collection_folder) / "LICENSE").write_text("Creative Commons Attribution 4.0 International (CC BY 4.0)\n")


def write_csv(path, header, rows):
    """A CSV with exactly `header` (a list of column names, trailing spaces kept) and rows as lists of strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return path


# ---- LUNA16 ---------------------------------------------------------------------------------------------------

LUNA16_SERIESUID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."


def write_mhd(path, hu, spacing, *, offset, flipped_xy=False, compress=False):
    """`hu` (int16 (z, y, x) LPS) as MetaImage `.mhd` + `.raw`/`.zraw` (SimpleITK), optionally stored with x/y flipped.

    With `flipped_xy` the voxels are stored mirrored in x and y and the header says so with
    `TransformMatrix = -1 0 0 0 -1 0 0 0 1` and an `Offset` at the far corner, as some LUNA16 scans are.
    `offset` is the world position (x, y, z) of the first stored voxel.
    """
    import SimpleITK as sitk

    stored = hu[:, ::-1, ::-1] if flipped_xy else hu
    image = sitk.GetImageFromArray(np.ascontiguousarray(stored).astype(np.int16))
    image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
    image.SetOrigin(tuple(float(value) for value in offset))
    if flipped_xy:
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return Path(path)


# ---- Lung-PET-CT-Dx -----------------------------------------------------------------------------------------

def write_voc_xml(path, boxes, *, width=512, height=512):
    """A Lung-PET-CT-Dx annotation: PASCAL VOC with `Unknow` file fields, `<Difficult>`, one `<object>` per box.

    `boxes`: list of (letter, xmin, ymin, xmax, ymax).
    """
    objects = "".join(
        f"\t<object>\n\t\t<name>{letter}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        f"\t\t<Difficult>0</Difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
        f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for letter, xmin, ymin, xmax, ymax in boxes
    )
    text = (
        '<annotation verified="no">\n\t<folder>Unknow</folder>\n\t<filename>Unknow</filename>\n\t<path>Unknow</path>\n'
        "\t<source>\n\t\t<database>Unknown</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>1</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n{objects}</annotation>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


LUNG_PET_CT_DX_CLINICAL_HEADER = [
    "No.", "NewPatientID", "Sex", "Age", "weight (kg)", "T-Stage", "N-Stage", "\uff2d-Stage",
    "Histopathological grading", "Smoking History",
]  # fmt: skip


def write_xlsx(path, header, rows):
    """An Excel workbook with one sheet: `header` then `rows` (values kept as given: numbers stay numbers)."""
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    return path


# ---- whole downloads ------------------------------------------------------------------------------------------


class FakeTciaDownload:
    """A fake NBIA Data Retriever download: `<root>/manifest-<digits>/<Collection>/<PatientID>/<study>/<series>/`.

    `naming` is `descriptive` or `classic` folder names; `file_naming` `retriever36` (`1-001.dcm`) or `old`
    (`000001.dcm`). Every added series is remembered (`self.series`, dicts) so `write_metadata` can list them.
    """

    def __init__(
        self, root, collection, naming="descriptive", file_naming="retriever36", manifest_digits="1603198545583"
    ):
        self.manifest_folder = Path(root) / f"manifest-{manifest_digits}"
        self.collection = collection
        self.collection_folder = self.manifest_folder / collection
        self.collection_folder.mkdir(parents=True, exist_ok=True)
        write_license(self.collection_folder)
        self.naming = naming
        self.file_naming = file_naming
        self.series = []

    def add_study(self, patient_id, study_description="NA"):
        study_uid = new_uid()
        folder = self.collection_folder / patient_id / study_folder_name(study_uid, self.naming, study_description)
        return {"patient_id": patient_id, "study_uid": study_uid, "folder": folder, "frame_of_reference_uid": new_uid()}

    def _series_folder(self, study, series_uid, number, description):
        return study["folder"] / series_folder_name(series_uid, self.naming, number, description)

    def _remember(
        self, study, modality, sop_class_uid, series_uid, folder, count, description="", manufacturer="", **extra
    ):
        record = {
            "patient_id": study["patient_id"], "study_uid": study["study_uid"], "modality": modality,
            "sop_class_uid": sop_class_uid, "series_uid": series_uid, "folder": folder, "count": count,
            "description": description, "manufacturer": manufacturer, **extra,
        }  # fmt: skip
        self.series.append(record)
        return record

    def add_ct(self, study, hu, spacing, origin, series_number=0, description="", manufacturer="SIEMENS"):
        series_uid = new_uid()
        folder = self._series_folder(study, series_uid, series_number, description or "NA")
        sop_instance_uids = write_ct_series(
            folder, hu, spacing, patient_id=study["patient_id"], study_uid=study["study_uid"], series_uid=series_uid,
            frame_of_reference_uid=study["frame_of_reference_uid"], origin=origin, series_number=series_number,
            series_description=description, manufacturer=manufacturer, file_naming=self.file_naming,
        )  # fmt: skip
        return self._remember(study, "CT", CT_IMAGE_STORAGE, series_uid, folder, hu.shape[0], description, manufacturer,
                              sop_instance_uids=sop_instance_uids)  # fmt: skip

    def add_seg(self, study, masks, spacing, origin, z_offset=0):
        series_uid = new_uid()
        folder = self._series_folder(study, series_uid, 300, "Segmentation")
        write_seg(
            folder / "1-1.dcm",
            masks,
            spacing,
            origin=origin,
            patient_id=study["patient_id"],
            study_uid=study["study_uid"],
            series_uid=series_uid,
            frame_of_reference_uid=study["frame_of_reference_uid"],
            z_offset=z_offset,
        )
        return self._remember(study, "SEG", SEGMENTATION_STORAGE, series_uid, folder, 1, "Segmentation", "QIICR")

    def add_rtstruct(self, study, contours, referenced_series_uid):
        series_uid = new_uid()
        folder = self._series_folder(study, series_uid, 3, "NA")
        write_rtstruct(
            folder / "1-1.dcm", contours, patient_id=study["patient_id"], study_uid=study["study_uid"],
            series_uid=series_uid, frame_of_reference_uid=study["frame_of_reference_uid"],
            referenced_series_uid=referenced_series_uid,
        )  # fmt: skip
        return self._remember(
            study, "RTSTRUCT", RT_STRUCTURE_SET_STORAGE, series_uid, folder, 1, "", "Varian Medical Systems"
        )

    def add_secondary_capture(self, study, image, count=3):
        series_uid = new_uid()
        folder = self._series_folder(study, series_uid, 1001, "Fused MPR")
        sop_instance_uids = write_secondary_capture_series(
            folder,
            image,
            patient_id=study["patient_id"],
            study_uid=study["study_uid"],
            series_uid=series_uid,
            count=count,
        )
        return self._remember(study, "CT", SECONDARY_CAPTURE_STORAGE, series_uid, folder, count, "Fused MPR",
                              sop_instance_uids=sop_instance_uids)  # fmt: skip

    def manifest_rows(self, windows_paths=False):
        return [
            manifest_row(
                collection=self.collection, series_uid=item["series_uid"], subject_id=item["patient_id"],
                study_uid=item["study_uid"], modality=item["modality"], sop_class_uid=item["sop_class_uid"],
                folder=item["folder"], manifest_folder=self.manifest_folder, series_description=item["description"],
                manufacturer=item["manufacturer"], number_of_images=item["count"], windows_paths=windows_paths,
            )  # fmt: skip
            for item in self.series
        ]

    def write_metadata(self, windows_paths=False, extra_rows=()):
        return write_manifest_metadata(self.manifest_folder, self.manifest_rows(windows_paths) + list(extra_rows))


def strings_in(value):
    """Every string inside a (nested) dataset row, for checking that no identifying value leaks."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_in(item)


def nifti_array_lps(image):
    """A decoded `Nifti` feature value back as the (z, y, x) LPS array it was built from."""
    return np.asarray(image.dataobj).transpose(2, 1, 0)


def nifti_world_lps(image, index_zyx):
    """World (x, y, z) LPS mm of a (z, y, x) voxel according to a decoded NIfTI image's affine."""
    ras = image.affine @ np.array([index_zyx[2], index_zyx[1], index_zyx[0], 1.0])
    return np.array([-ras[0], -ras[1], ras[2]])


def read_header_of(folder, sop_instance_uid):
    """The header of the file of `folder` whose SOPInstanceUID is `sop_instance_uid`."""
    import pydicom

    for path in sorted(Path(folder).glob("*.dcm")):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if header.SOPInstanceUID == sop_instance_uid:
            return header
    raise FileNotFoundError(f"no file with SOPInstanceUID {sop_instance_uid} in {folder}")
