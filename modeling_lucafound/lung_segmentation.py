"""Weight-free lung segmentation for chest CT that keeps juxtapleural and mediastinal tumours inside the lung region.

The work is done on a coarse grid (about 3 mm, chosen from the spacing so 0.5 mm and 5 mm slices behave alike) and
mapped back to the full grid, where the boundary is refined on the original voxels: body mask, air inside the body,
lung components chosen by physical volume, trachea removed, a 3D closing of physical radius that fills the dents a
tumour makes in the aerated lung (juxtapleural, hilar, mediastinal), hole filling. An optional `lungmask` backend is
used only when that package and its weights are already installed (nothing is downloaded). scipy is imported lazily:
this module is copied into saved model folders.
"""

import math

import numpy as np

from .errors import InvalidPreprocessingOptionError, LungSegmentationBackendError, NoLungsFoundError


# Voxels below this are air (lung parenchyma is about -900 to -500 HU; soft tissue about -100 to 100 HU).
AIR_THRESHOLD_HU = -400
# Target spacing (mm) of the coarse grid the segmentation runs on.
COARSE_SPACING_MM = 3.0
# Radius (mm) of the closing that fills dents made by tumours in the aerated lung (fills masses up to ~2x this wide).
TUMOUR_CLOSING_RADIUS_MM = 15.0
# A second air component is a lung (not bowel or stomach gas) when it is at least this fraction of the largest ...
SECOND_LUNG_RELATIVE_VOLUME = 0.02
# ... and reaches above the middle of the largest one (gas in the abdomen lies below the lungs).

# Less aerated volume than this (mL) inside the body means the scan shows no lungs (e.g. a head CT).
MINIMUM_LUNG_VOLUME_ML = 250.0
# Cross-section (mm^2) and distance from the midline (mm) below which a lone air region above the lungs is trachea.
TRACHEA_MAXIMUM_AREA_MM2 = 700.0
TRACHEA_MAXIMUM_OFFSET_MM = 20.0
# Gaps (mm) between lung region voxels along a left-right row up to this width are filled: the narrow mediastinum
# (paratracheal, aortopulmonary, subcarinal masses) joins the lung region; the heart, wider, does not.
MEDIASTINAL_BRIDGE_MM = 50.0
SEGMENTATION_BACKENDS = ("builtin", "lungmask")


def _import_ndimage():
    try:
        from scipy import ndimage
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Lung segmentation needs scipy: `pip install scipy`.") from error
    return ndimage


def coarse_factors(spacing, coarse_spacing_mm=COARSE_SPACING_MM):
    """Integer block size per axis (z, y, x) that brings `spacing` close to `coarse_spacing_mm`."""
    return tuple(max(1, int(round(coarse_spacing_mm / float(s)))) for s in spacing)


def block_mean(hu, factors):
    """Mean HU over blocks of `factors` voxels (the trailing partial block is left out), as float32.

    Uses SimpleITK's multithreaded BinShrink when available (one int16 copy of the volume), numpy otherwise.
    """
    nz, ny, nx = (size // factor for size, factor in zip(hu.shape, factors))
    fz, fy, fx = factors
    if min(nz, ny, nx) == 0:
        raise NoLungsFoundError(f"The volume {hu.shape} is too small to segment lungs at {factors} voxel blocks.")
    if tuple(factors) == (1, 1, 1):
        return hu.astype(np.float32)
    try:
        import SimpleITK as sitk
    except ImportError:
        sitk = None
    if sitk is not None:
        image = sitk.GetImageFromArray(np.ascontiguousarray(hu[: nz * fz, : ny * fy, : nx * fx]))
        shrunk = sitk.BinShrink(image, [int(fx), int(fy), int(fz)])
        del image
        return sitk.GetArrayFromImage(shrunk).astype(np.float32)
    total = np.zeros((nz, ny, nx), dtype=np.float32)
    for dz in range(fz):
        plane = hu[dz : nz * fz : fz, : ny * fy, : nx * fx]
        summed_x = plane.reshape(nz, ny * fy, nx, fx).sum(axis=3, dtype=np.int32)
        total += summed_x.reshape(nz, ny, fy, nx).sum(axis=2)
    total /= fz * fy * fx
    return total


def upsample_mask(coarse_mask, full_shape, factors):
    """Nearest-neighbour map of a coarse mask back onto the full grid (partial edge blocks take the last block)."""
    upsampled = coarse_mask
    for axis, (size, factor) in enumerate(zip(full_shape, factors)):
        if factor > 1:
            upsampled = np.repeat(upsampled, factor, axis=axis)
        missing = size - upsampled.shape[axis]
        if missing > 0:
            edge = np.repeat(np.take(upsampled, [-1], axis=axis), missing, axis=axis)
            upsampled = np.concatenate([upsampled, edge], axis=axis)
    return upsampled


def bounding_box(mask):
    """Half-open [[z0, z1], [y0, y1], [x0, x1]] voxel box of a boolean mask, or None if it is empty."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            return None
        box.append([int(present[0]), int(present[-1]) + 1])
    return box


def _largest_component(mask, ndimage, structure=None):
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _in_plane_structure():
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    return structure


def body_mask_coarse(coarse_hu, ndimage):
    """The patient's body on the coarse grid: largest non-air component, holes filled slice by slice."""
    tissue = coarse_hu >= AIR_THRESHOLD_HU
    body = _largest_component(tissue, ndimage)
    return ndimage.binary_fill_holes(body, structure=_in_plane_structure())


def segment_body(hu, spacing):
    """Boolean mask of the patient's body (excludes the air around the patient), same shape as `hu`."""
    ndimage = _import_ndimage()
    factors = coarse_factors(spacing)
    body = body_mask_coarse(block_mean(hu, factors), ndimage)
    if not body.any():
        raise NoLungsFoundError("No body found in the volume: every voxel is air. Is this a CT of a patient?")
    return upsample_mask(body, hu.shape, factors)


def _select_lung_components(candidates, voxel_ml, ndimage):
    labels, count = ndimage.label(candidates)
    if count == 0:
        return np.zeros_like(candidates), 0.0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    largest_profile = (labels == largest).sum(axis=(1, 2))
    largest_z_centre = float(np.average(np.arange(candidates.shape[0]), weights=largest_profile))
    keep = np.zeros(count + 1, dtype=bool)
    keep[largest] = True
    slices = ndimage.find_objects(labels)
    for label in range(1, count + 1):
        if label == largest or sizes[label] < SECOND_LUNG_RELATIVE_VOLUME * sizes[largest]:
            continue
        top = slices[label - 1][0].stop - 1  # z increases towards the head (LPS)
        if top >= largest_z_centre:
            keep[label] = True
    lungs = keep[labels]
    return lungs, float(sizes[keep].sum()) * voxel_ml


def _remove_trachea(lungs, coarse_spacing, body, ndimage):
    """Clear slices above the lungs where the only air is one small region near the midline (trachea)."""
    area_mm2 = coarse_spacing[1] * coarse_spacing[2]
    for z in range(lungs.shape[0] - 1, -1, -1):
        section = lungs[z]
        if not section.any():
            continue
        labels, count = ndimage.label(section)
        if count != 1 or section.sum() * area_mm2 > TRACHEA_MAXIMUM_AREA_MM2:
            break
        body_columns = np.flatnonzero(body[z].any(axis=0))
        midline = 0.5 * (body_columns[0] + body_columns[-1]) if body_columns.size else section.shape[1] / 2
        centre = np.flatnonzero(section.any(axis=0)).mean()
        if abs(centre - midline) * coarse_spacing[2] > TRACHEA_MAXIMUM_OFFSET_MM:
            break
        lungs[z] = False
    return lungs


def close_tumour_dents(mask, spacing, radius_mm=TUMOUR_CLOSING_RADIUS_MM, ndimage=None):
    """3D closing with a physical ball (distance transforms, spacing-aware), mediastinal bridge, hole filling.

    Fills the dents that juxtapleural and hilar masses make in the aerated lung and the narrow mediastinum between
    the lungs, so those tumours are inside the lung region. Neither step leaves the convex hull of the mask, so the
    region never grows into the abdomen or the neck.
    """
    ndimage = ndimage or _import_ndimage()
    pad = [int(math.ceil(radius_mm / s)) + 1 for s in spacing]
    padded = np.pad(mask, [(p, p) for p in pad])
    dilated = ndimage.distance_transform_edt(~padded, sampling=spacing) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=spacing) > radius_mm
    closed = closed[pad[0] : pad[0] + mask.shape[0], pad[1] : pad[1] + mask.shape[1], pad[2] : pad[2] + mask.shape[2]]
    closed |= mask
    closed |= bridge_mediastinum(closed, spacing[2])
    closed = ndimage.binary_fill_holes(closed, structure=_in_plane_structure())
    return ndimage.binary_fill_holes(closed)


def bridge_mediastinum(mask, x_spacing, maximum_gap_mm=MEDIASTINAL_BRIDGE_MM):
    """Voxels in left-right gaps no wider than `maximum_gap_mm` between mask voxels of the same (z, y) row."""
    seen_left = np.logical_or.accumulate(mask, axis=2)
    seen_right = np.logical_or.accumulate(mask[:, :, ::-1], axis=2)[:, :, ::-1]
    gaps = seen_left & seen_right & ~mask
    if not gaps.any():
        return gaps
    # width of each gap run: distance to the previous and next mask voxel along x
    index = np.arange(mask.shape[2])
    previous = np.maximum.accumulate(np.where(mask, index, -1), axis=2)
    following = np.minimum.accumulate(np.where(mask, index, mask.shape[2])[:, :, ::-1], axis=2)[:, :, ::-1]
    return gaps & ((following - previous - 1) * x_spacing <= maximum_gap_mm)


def segment_lungs(hu, spacing, backend="builtin"):
    """Boolean lung-region mask (same shape as `hu`): both lungs with the tumours that touch them, no trachea.

    `hu`: int16 Hounsfield units, axes (z, y, x) in LPS (z increasing towards the head); `spacing`: (z, y, x) mm.
    Raises `NoLungsFoundError` when the scan holds no lungs (e.g. a head CT).
    """
    if backend not in SEGMENTATION_BACKENDS:
        raise InvalidPreprocessingOptionError(
            f"Unknown lung segmentation backend {backend!r}; choose one of {', '.join(SEGMENTATION_BACKENDS)}."
        )
    ndimage = _import_ndimage()
    spacing = tuple(float(s) for s in spacing)
    factors = coarse_factors(spacing)
    coarse_spacing = tuple(s * f for s, f in zip(spacing, factors))
    coarse_hu = block_mean(hu, factors)
    voxel_ml = float(np.prod(coarse_spacing)) / 1000.0
    if backend == "lungmask":
        full_lungs = _segment_lungs_with_lungmask(hu, spacing)
        lungs = _block_any(full_lungs, factors)
        volume_ml = float(lungs.sum()) * voxel_ml
    else:
        body = body_mask_coarse(coarse_hu, ndimage)
        candidates = (coarse_hu < AIR_THRESHOLD_HU) & body
        lungs, volume_ml = _select_lung_components(candidates, voxel_ml, ndimage)
    if volume_ml < MINIMUM_LUNG_VOLUME_ML:
        raise NoLungsFoundError(
            f"No lungs found: only {volume_ml:.0f} mL of air inside the body (a chest CT has well over "
            f"{MINIMUM_LUNG_VOLUME_ML:g} mL). Is this a chest CT? Head, abdomen or limb scans cannot be lung-cropped; "
            "use crop_mode='body' or 'none' if you really want to embed it."
        )
    if backend == "builtin":
        lungs = _remove_trachea(lungs, coarse_spacing, body, ndimage)
    region = close_tumour_dents(lungs, coarse_spacing, ndimage=ndimage)
    mask = upsample_mask(region, hu.shape, factors)
    # refine the boundary on the original voxels: air voxels within one coarse block of the region belong to it
    # (only along axes that were coarsened: a one-block step along a full-resolution axis would regrow the trachea)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1, 1, 1] = True
    for axis, factor in enumerate(factors):
        if factor > 1:
            structure[tuple(slice(None) if a == axis else 1 for a in range(3))] = True
    near = upsample_mask(ndimage.binary_dilation(region, structure=structure), hu.shape, factors)
    near &= hu < AIR_THRESHOLD_HU
    mask |= near
    if backend == "lungmask":
        mask |= full_lungs
    return mask


def _block_any(mask, factors):
    nz, ny, nx = (size // factor for size, factor in zip(mask.shape, factors))
    fz, fy, fx = factors
    trimmed = mask[: nz * fz, : ny * fy, : nx * fx]
    return trimmed.reshape(nz, fz, ny, fy, nx, fx).any(axis=(1, 3, 5))


def _segment_lungs_with_lungmask(hu, spacing):
    """Lungs from the `lungmask` U-Net (R231), only when the package and its weights are already on this machine."""
    try:
        from lungmask import LMInferer
    except ImportError:
        raise LungSegmentationBackendError(
            "The 'lungmask' backend needs the lungmask package (`pip install lungmask`) and its R231 weights in the "
            "torch hub cache; or use the built-in backend (segmentation_backend='builtin')."
        ) from None
    import glob
    import os

    import torch

    if not glob.glob(os.path.join(torch.hub.get_dir(), "checkpoints", "unet_r231*")):
        raise LungSegmentationBackendError(
            "lungmask is installed but its R231 weights are not in the torch hub cache "
            f"({os.path.join(torch.hub.get_dir(), 'checkpoints')}); LuCaFound never downloads at run time. Run lungmask "
            "once with network access to cache them, or use segmentation_backend='builtin'."
        )
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    labels = LMInferer(modelname="R231", force_cpu=not torch.cuda.is_available()).apply(image)
    return np.asarray(labels) > 0
