"""Benchmark: chest CT phantoms generated per second at 128 x 256 x 256 (target >= 2 volumes/s, one process).

Prints a JSON line and a small table. Usage: python bench/bench_phantoms.py [--count 10] [--shape 128 256 256]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without reinstalling

from datasets_scripts.phantoms import generate_chest_phantom


TARGET_VOLUMES_PER_SECOND = 2.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 256, 256))
    args = parser.parse_args()
    generate_chest_phantom(0, shape=args.shape)  # warm-up (imports, caches)
    durations = []
    for seed in range(1, args.count + 1):
        start = time.perf_counter()
        generate_chest_phantom(seed, shape=args.shape)
        durations.append(time.perf_counter() - start)
    total = sum(durations)
    result = {
        "benchmark": "phantom_generation",
        "shape": list(args.shape),
        "volumes": args.count,
        "seconds": round(total, 3),
        "volumes_per_second": round(args.count / total, 2),
        "median_seconds_per_volume": round(float(np.median(durations)), 3),
        "target_volumes_per_second": TARGET_VOLUMES_PER_SECOND,
        "meets_target": args.count / total >= TARGET_VOLUMES_PER_SECOND,
    }
    print(json.dumps(result))
    print(f"{'shape':>16} {'volumes':>8} {'vol/s':>8} {'median s':>9} {'target':>7}")
    print(
        f"{'x'.join(map(str, args.shape)):>16} {args.count:>8} {result['volumes_per_second']:>8} "
        f"{result['median_seconds_per_volume']:>9} {TARGET_VOLUMES_PER_SECOND:>7}"
    )


if __name__ == "__main__":
    main()
