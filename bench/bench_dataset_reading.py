"""Benchmark: reading the `preprocessed` SyntheticLungCT config for training, volumes per second in one process
(target >= 100 volumes/s at the default 48 x 256 x 256 float16 pixel_values).

Builds the cohort once into --cache-dir (reused on later runs), then reads every row's pixel_values, labels and
report as a training loop would, in batches, for several epochs. Prints a JSON line and a small table.
Usage: python bench/bench_dataset_reading.py [--num-samples 32] [--epochs 3] [--batch-size 8] [--format numpy|torch]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without reinstalling

from datasets_scripts import SyntheticLungCT  # noqa: E402
from datasets_scripts.common import pixel_values_batch  # noqa: E402


TARGET_VOLUMES_PER_SECOND = 100.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--image-size", type=int, nargs=3, default=(48, 256, 256))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--format",
        choices=("arrow", "numpy", "torch"),
        default="arrow",
        help="arrow: pixel_values_batch (float16, zero-copy) then torch.from_numpy; numpy/torch: datasets formatters",
    )
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "lucafound_bench_cache"))
    args = parser.parse_args()

    start = time.perf_counter()
    builder = SyntheticLungCT(
        config_name="preprocessed",
        num_samples=args.num_samples,
        image_size=tuple(args.image_size),
        cache_dir=args.cache_dir,
    )
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train").select_columns(["pixel_values", "histology", "stage", "report"])
    if args.format != "arrow":
        dataset = dataset.with_format(
            args.format, columns=["pixel_values", "histology", "stage"], output_all_columns=True
        )
    build_seconds = time.perf_counter() - start

    import torch  # imported before timing: the first import takes seconds

    volumes, checksum = 0, 0.0
    start = time.perf_counter()
    for _ in range(args.epochs):
        for first in range(0, len(dataset), args.batch_size):
            if args.format == "arrow":
                rows = slice(first, first + args.batch_size)
                pixel_values = torch.from_numpy(pixel_values_batch(dataset, rows))
                labels = dataset.select_columns(["histology", "stage", "report"])[rows]
                torch.tensor(labels["histology"]), torch.tensor(labels["stage"])
            else:
                batch = dataset[first : first + args.batch_size]
                pixel_values = batch["pixel_values"]
            checksum += float(pixel_values[:, 0, 0, 0].sum())
            volumes += len(pixel_values)
    seconds = time.perf_counter() - start
    result = {
        "benchmark": "preprocessed_dataset_reading",
        "format": args.format,
        "image_size": list(args.image_size),
        "rows": len(dataset),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "volumes_read": volumes,
        "seconds": round(seconds, 3),
        "volumes_per_second": round(volumes / seconds, 1),
        "megabytes_per_second_float16": round(
            volumes * 2 * int(__import__("math").prod(args.image_size)) / seconds / 2**20, 1
        ),
        "build_or_load_seconds": round(build_seconds, 1),
        "target_volumes_per_second": TARGET_VOLUMES_PER_SECOND,
        "meets_target": volumes / seconds >= TARGET_VOLUMES_PER_SECOND,
    }
    print(json.dumps(result))
    print(f"{'format':>7} {'size':>12} {'volumes':>8} {'vol/s':>8} {'MB/s':>8} {'target':>7}")
    print(
        f"{args.format:>7} {'x'.join(map(str, args.image_size)):>12} {volumes:>8} {result['volumes_per_second']:>8} "
        f"{result['megabytes_per_second_float16']:>8} {TARGET_VOLUMES_PER_SECOND:>7}"
    )


if __name__ == "__main__":
    main()
