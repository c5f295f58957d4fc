"""`lucafound preprocess INPUT... --output-dir DIR`: write each CT's model-input crop and its lung mask as NIfTI.

For every input (DICOM series folder, .nii/.nii.gz/.nrrd/.mhd/.mha file) it writes `<id>_crop.nii.gz` (what the
model sees: windowed [0, 1], resized to the output size, with the physical geometry of the crop) and
`<id>_lung_mask.nii.gz` (the region mask on the same grid), each atomically. `<id>` comes from the file or folder
name, never from DICOM patient fields, and no DICOM header field is written. A bad input is reported and skipped;
the exit code is 1 if any input failed.
"""

import argparse
import sys

from ..atomic_files import atomic_output, write_json_atomically


def register(subparsers):
    parser = subparsers.add_parser(
        "preprocess",
        help="Crop, window and resize CTs as the model expects; write the crops and lung masks as NIfTI.",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM series folders or .nii/.nii.gz/.nrrd/.mhd files")
    parser.add_argument("--output-dir", required=True, help="folder for <id>_crop.nii.gz and <id>_lung_mask.nii.gz")
    parser.add_argument(
        "--processor",
        default=None,
        help="model folder or preprocessor_config.json to take the preprocessing from (default: the released settings)",
    )
    parser.add_argument("--crop-mode", choices=("lung", "body", "none"), default=None)
    parser.add_argument("--crop-margin-mm", type=float, default=None)
    parser.add_argument("--output-size", type=int, nargs=3, metavar=("D", "H", "W"), default=None)
    parser.add_argument("--hu-window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None)
    parser.add_argument("--max-input-megabytes", type=float, default=None)
    parser.add_argument("--series-uid", default=None, help="the series to read from DICOM folders holding several")
    parser.add_argument(
        "--native-resolution",
        action="store_true",
        help="write the crop in HU at the scan's own spacing (and the mask cropped on that grid) instead of the model input",
    )
    parser.set_defaults(func=run)
    return parser


def output_id(path):
    """File or folder name without CT extensions, reduced to safe characters (never a DICOM patient field)."""
    import re
    from pathlib import Path

    name = Path(path).resolve().name if str(path) in (".", "..") else Path(path).name
    lowered = name.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mhd", ".mha", ".dcm"):
        if lowered.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "scan"


def write_image_atomically(image, path):
    """Write a SimpleITK image next to `path` under a temporary name, then rename it into place."""
    import SimpleITK as sitk

    with atomic_output(path, suffix=".nii.gz") as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)


def _resized_grid_geometry(volume, box, output_size):
    """Origin (x, y, z) and spacing (x, y, z) of the resized crop grid, so it overlays the scan in physical space."""
    import numpy as np

    extents = [stop - start for start, stop in box]
    step = [extent / size for extent, size in zip(extents, output_size)]  # in source voxels, per output voxel
    first_centre = [start - 0.5 + 0.5 * s for (start, _), s in zip(box, step)]
    origin = volume.index_to_physical(first_centre)
    spacing_zyx = np.asarray(volume.spacing) * np.asarray(step)
    return tuple(float(o) for o in origin), tuple(float(s) for s in spacing_zyx[::-1])


def preprocess_one(processor, source, output_dir, identifier, series_uid=None, native_resolution=False):
    """Preprocess one input and write its two NIfTI files; returns the crop info."""
    import numpy as np
    import SimpleITK as sitk

    from ..image_processing_lucafound import resize_mask

    result = processor.preprocess_volume(source, series_uid=series_uid, return_mask=True)
    volume, mask, crop_info = result["volume"], result["mask"], result["crop_info"]
    box = crop_info["bbox"]
    region = tuple(slice(start, stop) for start, stop in box)
    if native_resolution:
        crop = volume.to_sitk(np.ascontiguousarray(volume.array[region]))
        mask_image = volume.to_sitk(np.ascontiguousarray(mask[region]).astype(np.uint8))
        corner = volume.index_to_physical([start for start, _ in box])
        for image in (crop, mask_image):
            image.SetOrigin(corner)
    else:
        origin, spacing = _resized_grid_geometry(volume, box, processor.output_size)
        crop = sitk.GetImageFromArray(np.ascontiguousarray(result["pixel_values"][0]))
        mask_image = sitk.GetImageFromArray(resize_mask(mask[region], processor.output_size).astype(np.uint8))
        for image in (crop, mask_image):
            image.SetOrigin(origin)
            image.SetSpacing(spacing)
    write_image_atomically(crop, output_dir / f"{identifier}_crop.nii.gz")
    write_image_atomically(mask_image, output_dir / f"{identifier}_lung_mask.nii.gz")
    return crop_info


def run(args):
    import time
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..errors import LuCaFoundInputError
    from ..image_processing_lucafound import LuCaFoundImageProcessor

    overrides = {
        name: value
        for name, value in {
            "crop_mode": args.crop_mode,
            "crop_margin_mm": args.crop_margin_mm,
            "output_size": args.output_size,
            "hu_window": args.hu_window,
            "max_input_megabytes": args.max_input_megabytes,
        }.items()
        if value is not None
    }
    if args.processor:
        processor = LuCaFoundImageProcessor.from_pretrained(args.processor, **overrides)
    else:
        processor = LuCaFoundImageProcessor(**overrides)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    rows, used_ids = [], set()
    for source in tqdm(args.inputs, desc="preprocess", unit="scan", file=sys.stderr):
        identifier = output_id(source)
        base, number = identifier, 2
        while identifier in used_ids:
            identifier, number = f"{base}_{number}", number + 1
        used_ids.add(identifier)
        started = time.perf_counter()
        try:
            crop_info = preprocess_one(
                processor, source, output_dir, identifier, args.series_uid, native_resolution=args.native_resolution
            )
        except LuCaFoundInputError as error:
            rows.append({"id": identifier, "input": str(source), "status": "failed", "detail": str(error)})
            tqdm.write(f"skipped {source}: {error}", file=sys.stderr)
            continue
        except Exception as error:  # an unexpected failure on one scan must not stop the batch
            detail = f"unexpected {type(error).__name__}: {error}"
            rows.append({"id": identifier, "input": str(source), "status": "failed", "detail": detail})
            tqdm.write(f"skipped {source}: {detail}", file=sys.stderr)
            continue
        rows.append(
            {
                "id": identifier,
                "input": str(source),
                "status": "ok",
                "bbox": crop_info["bbox"],
                "spacing": list(crop_info["spacing"]),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )

    summary_path = output_dir / "preprocess_summary.json"
    write_json_atomically(summary_path, {"processor": processor.to_dict(), "scans": rows})

    print(_summary_table(rows))
    failed = sum(row["status"] != "ok" for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} scans preprocessed into {output_dir}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _summary_table(rows):
    header = ("id", "status", "crop box [[z0,z1],[y0,y1],[x0,x1]] / reason")
    lines = [(row["id"], row["status"], str(row["bbox"]) if row["status"] == "ok" else row["detail"].splitlines()[0]) for row in rows]
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(2)]
    out = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]}"]
    out.append(f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * len(header[2])}")
    out.extend(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in lines)
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="lucafound")
    register(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(["preprocess", *sys.argv[1:]])
    sys.exit(arguments.func(arguments))
