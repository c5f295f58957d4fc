"""The benchmark suite runs end to end: `bench/run_all.py --smoke` writes one JSON with every section filled."""

import json
import numbers
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_run_all_smoke_writes_every_benchmark_with_numeric_figures(tmp_path, test_data_dir):
    output = tmp_path / "latest.json"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "run_all.py"), "--smoke", "--output", str(output)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(output.read_text())
    assert report["mode"] == "smoke"
    benchmarks = report["benchmarks"]
    assert set(benchmarks) == {"encoder", "preprocessing", "training_step", "dataset_reading", "embed"}
    for entry in benchmarks.values():
        assert entry["error"] is None and isinstance(entry["wall_seconds"], float)

    encoder = benchmarks["encoder"]["result"]
    assert set(encoder["runs"]) >= {"ours_fp32", "ours_bf16_autocast"}
    for run in encoder["runs"].values():
        for key in ("seconds", "reference_gflops", "fraction_of_matmul_peak", "cosine_vs_ours_fp32"):
            assert isinstance(run[key], numbers.Real) and run[key] > 0, key
    assert encoder["runs"]["ours_fp32"]["max_abs_difference_vs_ours_fp32"] == 0
    assert 0 < encoder["ours_tflop_per_forward"] <= encoder["reference_tflop_per_forward"]
    assert all(value > 0 for value in encoder["matmul_peak_gflops"].values())

    preprocessing = benchmarks["preprocessing"]["result"]["results"]
    assert [case["case"] for case in preprocessing] == ["real_ct_file"]
    assert preprocessing[0]["seconds_best"] > 0

    training = benchmarks["training_step"]["result"]
    assert [case["gradient_checkpointing"] for case in training] == [False, True]
    for case in training:
        assert case["samples_per_second"] > 0 and case["peak_memory_mb"] > 0

    reading = benchmarks["dataset_reading"]["result"]
    assert [run["format"] for run in reading["runs"]] == ["arrow", "torch"]
    assert all(run["volumes_per_second"] > 0 for run in reading["runs"])

    embed = benchmarks["embed"]["result"]
    assert embed["embedded"] == 1 and embed["volumes_per_second"] > 0
