"""Benchmark of the CT input pipeline: wall time and peak memory of `LuCaFoundImageProcessor` end to end.

Cases: the shared real CT read from its NRRD file (targets: <= 1.5 s on a 2-core machine), and a synthetic
512 x 512 x 300 chest volume given as an int16 array (target: <= 5 s); for both, peak memory <= 4x the raw volume.
Each case runs in a fresh process: time is the best and median of several runs with a per-step breakdown; memory
is the rise of the process' peak resident set (VmHWM, reset before the run) over the resident set before it, and
the tracemalloc peak (numpy allocations) in a separate run. Prints one JSON object, then a table.

    python bench/bench_preprocessing.py [--data-dir ../shared/fixtures] [--repeats 3]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without reinstalling
from modeling_lucafound.atomic_files import write_json_atomically  # noqa: E402

TARGETS = {"real_ct_file": {"seconds": 1.5, "memory_ratio": 4.0}, "synthetic_512x512x300": {"seconds": 5.0, "memory_ratio": 4.0}}


def synthetic_chest(shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7), seed=0):
    """An int16 chest-like volume: body, two ellipsoid lungs, spine, a mass, noise; built slab by slab (low memory)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    volume = np.empty(shape, dtype=np.int16)
    y = ((np.arange(shape[1]) + 0.5) * spacing[1] - shape[1] * spacing[1] / 2)[:, None]
    x = ((np.arange(shape[2]) + 0.5) * spacing[2] - shape[2] * spacing[2] / 2)[None, :]
    body = (y / 110.0) ** 2 + (x / 160.0) ** 2 <= 1.0
    spine = ((y - 80.0) / 18.0) ** 2 + (x / 18.0) ** 2 <= 1.0
    for z_index in range(shape[0]):
        z = (z_index + 0.5) * spacing[0]
        plane = np.where(body, 40.0, -1000.0)
        plane[spine] = 600.0
        for side in (-1, 1):
            lung = ((z - 170.0) / 120.0) ** 2 + (y / 85.0) ** 2 + ((x - side * 80.0) / 60.0) ** 2 <= 1.0
            plane[lung] = -850.0
        mass = ((z - 170.0) / 15.0) ** 2 + (y / 15.0) ** 2 + ((x + 125.0) / 15.0) ** 2 <= 1.0
        plane[mass] = 45.0
        plane += rng.normal(0.0, 20.0, size=plane.shape)
        volume[z_index] = np.clip(np.rint(plane), -1024, 3071)
    return volume, spacing


def _resident_kilobytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak_resident():
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def run_case(case, data_dir, repeats, array_path):
    """Runs inside the worker process; returns the measurements of one case."""
    import numpy as np

    from modeling_lucafound.ct_io import read_ct
    from modeling_lucafound.image_processing_lucafound import LuCaFoundImageProcessor

    processor = LuCaFoundImageProcessor()
    if case == "real_ct_file":
        source, spacing = str(Path(data_dir) / "lung1_image.nrrd"), None
        raw_bytes = 48 * 512 * 512 * 2
    else:
        source, spacing = np.load(array_path), (1.0, 0.7, 0.7)
        raw_bytes = source.nbytes

    def steps():
        timings = {}
        started = time.perf_counter()
        volume = processor.load_volume(source, spacing=spacing)
        timings["read"] = time.perf_counter() - started
        mark = time.perf_counter()
        mask = processor.region_mask(volume)
        box = processor.crop_box(volume, mask)
        timings["segment_and_box"] = time.perf_counter() - mark
        mark = time.perf_counter()
        (z0, z1), (y0, y1), (x0, x1) = box
        pixel_values = processor.window_and_resize(volume.array[z0:z1, y0:y1, x0:x1])
        timings["crop_window_resize"] = time.perf_counter() - mark
        timings["total"] = time.perf_counter() - started
        return timings, box, pixel_values.shape

    steps()  # warm-up (imports, first-call allocations)
    runs = []
    for _ in range(repeats):
        before = _resident_kilobytes("VmRSS")
        reset = _reset_peak_resident()
        timings, box, shape = steps()
        peak = _resident_kilobytes("VmHWM") if reset else None
        timings["peak_rss_rise_bytes"] = None if peak is None else max(0, peak - before) * 1024
        runs.append(timings)
    # the official entry point gives the same box
    assert processor(source, spacing=spacing, return_crop_info=True)["crop_info"][0]["bbox"] == box
    import tracemalloc

    tracemalloc.start()
    steps()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    totals = sorted(run["total"] for run in runs)
    rss_rises = [run["peak_rss_rise_bytes"] for run in runs if run["peak_rss_rise_bytes"] is not None]
    best = min(runs, key=lambda run: run["total"])
    return {
        "case": case,
        "input_shape": list(read_ct(source, spacing=spacing).array.shape),
        "raw_volume_bytes": raw_bytes,
        "crop_bbox": box,
        "output_shape": list(shape),
        "seconds_best": round(totals[0], 3),
        "seconds_median": round(totals[len(totals) // 2], 3),
        "steps_seconds_best_run": {key: round(value, 3) for key, value in best.items() if key != "peak_rss_rise_bytes" and key != "total"},
        "peak_rss_rise_bytes": max(rss_rises) if rss_rises else None,
        "tracemalloc_peak_bytes": traced_peak,
        "peak_rss_ratio": round(max(rss_rises) / raw_bytes, 2) if rss_rises else None,
        "tracemalloc_ratio": round(traced_peak / raw_bytes, 2),
        "torch_threads": __import__("torch").get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = os.environ.get("LUCAFOUND_TEST_DATA", str(REPO_ROOT.parent / "shared" / "fixtures"))
    parser.add_argument("--data-dir", default=default_data)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(TARGETS), help="comma-separated subset of " + ", ".join(TARGETS))
    parser.add_argument("--synthetic-shape", type=int, nargs=3, default=[300, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--array-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_case(args.worker, args.data_dir, args.repeats, args.array_path)))
        return 0

    results = []
    with tempfile.TemporaryDirectory() as folder:
        import numpy as np

        array_path = os.path.join(folder, "synthetic.npy")
        cases = [name.strip() for name in args.cases.split(",") if name.strip()]
        if "synthetic_512x512x300" in cases:
            volume, _ = synthetic_chest(shape=tuple(args.synthetic_shape))
            np.save(array_path, volume)
            del volume
        for case in cases:
            command = [sys.executable, __file__, "--worker", case, "--data-dir", args.data_dir, "--repeats", str(args.repeats), "--array-path", array_path]
            completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
            if completed.returncode != 0:
                print(completed.stderr, file=sys.stderr)
                return completed.returncode
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            target = TARGETS[case]
            result["target_seconds"] = target["seconds"]
            result["target_memory_ratio"] = target["memory_ratio"]
            result["meets_time_target"] = result["seconds_best"] <= target["seconds"]
            result["meets_memory_target"] = result["peak_rss_ratio"] is not None and result["peak_rss_ratio"] <= target["memory_ratio"]
            results.append(result)
    report = {"benchmark": "preprocessing", "results": results}
    print(json.dumps(report, indent=2))
    if args.json:
        write_json_atomically(args.json, report)
    print()
    header = f"{'case':<24} {'best s':>7} {'median s':>9} {'target s':>9} {'peak RSS x raw':>15} {'tracemalloc x raw':>18}  crop bbox"
    print(header)
    print("-" * len(header))
    for result in results:
        print(
            f"{result['case']:<24} {result['seconds_best']:>7.2f} {result['seconds_median']:>9.2f} "
            f"{result['target_seconds']:>9.1f} {result['peak_rss_ratio']!s:>15} {result['tracemalloc_ratio']:>18.2f}  "
            f"{result['crop_bbox']}"
        )
        print(f"{'':<24} steps: {result['steps_seconds_best_run']}  (load average {result['load_average_1min']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
