"""Benchmark: reading the `preprocessed` SyntheticLungCT config for training, volumes per second in one process
(target >= 100 volumes/s at the default 48 x 256 x 256 float16 pixel_values).

Builds the cohort once into --cache-dir (reused on later runs), then reads every row's pixel_values, labels and
report as a training loop would, in batches, for several epochs. Prints a JSON line and a small table.
Usage: python bench/bench_dataset_reading.py [--num-samples 32] [--epochs 3] [--batch-size 8] [--formats arrow,torch]
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without reinstalling

from datasets_scripts import SyntheticLungCT  # noqa: E402
from datasets_scripts.common import pixel_values_batch  # noqa: E402
from modeling_lucafound.atomic_files import write_json_atomically  # noqa: E402


TARGET_VOLUMES_PER_SECOND = 100.0


def read_epochs(dataset, read_format, epochs, batch_size):
    """Read every row's pixel_values and labels `epochs` times as a training loop would; (volumes, seconds)."""
    import torch

    if read_format != "arrow":
        dataset = dataset.with_format(read_format, columns=["pixel_values", "histology", "stage"], output_all_columns=True)
    volumes, checksum = 0, 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        for first in range(0, len(dataset), batch_size):
            if read_format == "arrow":
                rows = slice(first, first + batch_size)
                pixel_values = torch.from_numpy(pixel_values_batch(dataset, rows))
                labels = dataset.select_columns(["histology", "stage", "report"])[rows]
                torch.tensor(labels["histology"]), torch.tensor(labels["stage"])
            else:
                pixel_values = dataset[first : first + batch_size]["pixel_values"]
            checksum += float(pixel_values[:, 0, 0, 0].sum())
            volumes += len(pixel_values)
    return volumes, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--image-size", type=int, nargs=3, default=(48, 256, 256))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--formats",
        default="arrow,torch",
        help="comma-separated, measured side by side: arrow (pixel_values_batch, float16, zero-copy, then "
        "torch.from_numpy), numpy, torch (the datasets formatters)",
    )
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "lucafound_bench_cache"))
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    builder = SyntheticLungCT(
        config_name="preprocessed",
        num_samples=args.num_samples,
        image_size=tuple(args.image_size),
        cache_dir=args.cache_dir,
    )
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train").select_columns(["pixel_values", "histology", "stage", "report"])
    build_seconds = time.perf_counter() - start
    import torch  # noqa: F401  imported before timing: the first import takes seconds

    volume_megabytes = 2 * math.prod(args.image_size) / 2**20
    runs = []
    for read_format in [name.strip() for name in args.formats.split(",") if name.strip()]:
        volumes, seconds = read_epochs(dataset, read_format, args.epochs, args.batch_size)
        runs.append({
            "format": read_format,
            "volumes_read": volumes,
            "seconds": round(seconds, 3),
            "volumes_per_second": round(volumes / seconds, 1),
            "megabytes_per_second_float16": round(volumes * volume_megabytes / seconds, 1),
            "meets_target": volumes / seconds >= TARGET_VOLUMES_PER_SECOND,
        })
    result = {
        "benchmark": "preprocessed_dataset_reading",
        "image_size": list(args.image_size),
        "rows": len(dataset),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "build_or_load_seconds": round(build_seconds, 1),
        "target_volumes_per_second": TARGET_VOLUMES_PER_SECOND,
        "runs": runs,
    }
    print(json.dumps(result))
    if args.json:
        write_json_atomically(args.json, result)
    print(f"{'format':>7} {'size':>12} {'volumes':>8} {'vol/s':>8} {'MB/s':>8} {'target':>7}")
    for run in runs:
        print(f"{run['format']:>7} {'x'.join(map(str, args.image_size)):>12} {run['volumes_read']:>8} "
              f"{run['volumes_per_second']:>8} {run['megabytes_per_second_float16']:>8} {TARGET_VOLUMES_PER_SECOND:>7}")
    return result


if __name__ == "__main__":
    main()
