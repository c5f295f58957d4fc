"""Exceptions for every failure a user's input can cause: each says what was wrong and what to do."""


class LuCaFoundInputError(ValueError):
    """Base class for errors caused by a user's input (files, arrays, checkpoints, configs)."""


class CheckpointKeyMismatchError(LuCaFoundInputError):
    """A checkpoint whose parameter names do not match the model it should load into."""


# --- CT input pipeline (ct_io, lung_segmentation, image_processing_lucafound, `lucafound preprocess`) ---


class CTFileNotFoundError(LuCaFoundInputError):
    """The CT path given does not exist."""


class UnreadableCTError(LuCaFoundInputError):
    """A file or object that exists but cannot be read as a CT volume (unknown format, corrupt, unsupported codec)."""


class EmptySeriesFolderError(LuCaFoundInputError):
    """A folder that contains no readable DICOM image."""


class MultipleSeriesError(LuCaFoundInputError):
    """A DICOM folder holding several CT series when no series UID was given (or the given one is absent)."""


class NotCTError(LuCaFoundInputError):
    """An image whose modality is not CT, or whose values are not Hounsfield units."""


class NotAVolumeError(LuCaFoundInputError):
    """A 2D image (or a single slice) where a 3D CT volume is needed."""


class TooFewSlicesError(LuCaFoundInputError):
    """A volume with fewer slices than the configured minimum."""


class InvalidSpacingError(LuCaFoundInputError):
    """Voxel spacing that is missing, zero, negative, not finite or implausibly large."""


class IrregularSliceSpacingError(LuCaFoundInputError):
    """A DICOM series with missing slices, duplicated positions, tilted or unevenly spaced slices."""


class NonFiniteValuesError(LuCaFoundInputError):
    """A volume containing NaN or infinite values."""


class NoLungsFoundError(LuCaFoundInputError):
    """Lung segmentation found no lungs (e.g. a head or abdomen CT), so there is nothing to crop to."""


class VolumeTooLargeError(LuCaFoundInputError):
    """A volume larger than the image processor's configured memory cap."""


class InvalidPreprocessingOptionError(LuCaFoundInputError):
    """An image processor or segmentation option with an unsupported value."""


class LungSegmentationBackendError(LuCaFoundInputError):
    """The requested lung segmentation backend is not installed or has no local weights."""
