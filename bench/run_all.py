"""Run every benchmark in bench/ and collect their JSON into one file (default bench/results/latest.json).

Each benchmark runs in its own process and measures its own comparisons side by side; a failing benchmark is
recorded with its error and the others still run. Prints a one-line summary per benchmark.

    python bench/run_all.py            # full sizes (tens of minutes on a 2-core CPU)
    python bench/run_all.py --quick    # smaller sizes and fewer repeats: under 2 minutes on a 2-core CPU
    python bench/run_all.py --smoke    # tiny sizes, seconds per benchmark: checks the suite runs (CI)
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # run from a checkout without reinstalling

from modeling_lucafound.atomic_files import write_json_atomically  # noqa: E402

DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"

# benchmark -> arguments, per mode; every benchmark also gets --json <file>
SUITES = {
    "full": {
        "encoder": ["bench_encoder.py", "--repeats", "3"],
        "preprocessing": ["bench_preprocessing.py", "--repeats", "3"],
        "training_step": ["bench_training_step.py", "--sizes", "tiny,base", "--batch-size", "1", "--steps", "2"],
        "dataset_reading": ["bench_dataset_reading.py", "--num-samples", "32", "--epochs", "3"],
        "embed": ["bench_embed.py", "--model-size", "tiny", "--num-volumes", "8", "--num-workers", "2"],
    },
    "quick": {
        "encoder": ["bench_encoder.py", "--size", "16", "64", "64", "--repeats", "2", "--no-compile"],
        "preprocessing": ["bench_preprocessing.py", "--repeats", "1"],
        "training_step": ["bench_training_step.py", "--sizes", "tiny", "--batch-size", "2", "--steps", "1"],
        "dataset_reading": ["bench_dataset_reading.py", "--num-samples", "8", "--epochs", "2"],
        "embed": ["bench_embed.py", "--model-size", "tiny", "--num-volumes", "2", "--volume-shape", "48", "128", "128",
                  "--spacing", "6", "2.8", "2.8", "--num-workers", "0", "--batch-size", "1"],
    },
    "smoke": {
        "encoder": ["bench_encoder.py", "--config", "tiny", "--size", "16", "64", "64", "--repeats", "1",
                    "--no-compile", "--peak-size", "256"],
        "preprocessing": ["bench_preprocessing.py", "--repeats", "1", "--cases", "real_ct_file"],
        "training_step": ["bench_training_step.py", "--sizes", "tiny", "--batch-size", "1", "--steps", "1",
                          "--image-size", "16", "32", "32", "--text-length", "16"],
        "dataset_reading": ["bench_dataset_reading.py", "--num-samples", "2", "--image-size", "8", "32", "32",
                            "--epochs", "1", "--batch-size", "2"],
        "embed": ["bench_embed.py", "--model-size", "tiny", "--num-volumes", "1", "--volume-shape", "24", "64", "64",
                  "--spacing", "12", "5.6", "5.6", "--num-workers", "0", "--batch-size", "1"],
    },
}


def run_benchmark(arguments, timeout):
    """Run one benchmark script; returns (its JSON or None, wall seconds, error text or None)."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "result.json"
        command = [sys.executable, str(BENCH_DIR / arguments[0]), *arguments[1:], "--json", str(output)]
        start = time.perf_counter()
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=BENCH_DIR.parent)
        except subprocess.TimeoutExpired:
            return None, time.perf_counter() - start, f"timed out after {timeout} s"
        seconds = time.perf_counter() - start
        if completed.returncode != 0 or not output.exists():
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
            return None, seconds, f"exit {completed.returncode}: " + " | ".join(tail)
        return json.loads(output.read_text()), seconds, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke")
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = parser.parse_args(argv)
    mode = args.mode or "full"
    suite = SUITES[mode]
    names = [name.strip() for name in args.only.split(",")] if args.only else list(suite)
    started = time.perf_counter()
    report = {
        "mode": mode,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": os.getloadavg()[0],
        "benchmarks": {},
    }
    for name in names:
        result, seconds, error = run_benchmark(suite[name], args.timeout)
        report["benchmarks"][name] = {"command": "python bench/" + " ".join(suite[name]), "wall_seconds": seconds,
                                      "result": result, "error": error}
        print(f"{name:<16} {seconds:7.1f} s  {'ok' if error is None else 'FAILED: ' + error}", flush=True)
    report["load_average_after"] = os.getloadavg()[0]
    report["wall_seconds"] = time.perf_counter() - started
    output = write_json_atomically(args.output, report)
    print(f"{'total':<16} {report['wall_seconds']:7.1f} s  -> {output}")
    return 0 if all(entry["error"] is None for entry in report["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
