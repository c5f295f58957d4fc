"""The global-batch contrastive loss: 2 CPU processes (torchrun, gloo) x 2 samples == 1 process x 4 samples,
loss and every gradient equal to 1e-5, for CLIP and SigLIP, with and without gradient accumulation."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("distributed_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = ["clip/accumulation1", "clip/accumulation2", "siglip/accumulation1", "siglip/accumulation2"]


def _run_worker(output, processes):
    environment = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, str(WORKER), "--output", str(output)]
    if processes > 1:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", "0", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", "127.0.0.1:0", str(WORKER), "--output", str(output),
        ]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f"worker failed ({processes} process(es)):\n{completed.stdout}\n{completed.stderr}"
    return torch.load(output, weights_only=False)


@pytest.fixture(scope="module")
def single_and_two_process_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    single = _run_worker(folder / "single.pt", 1)
    double = _run_worker(folder / "double.pt", 2)
    return single, double


def test_worker_really_ran_two_processes(single_and_two_process_results):
    single, double = single_and_two_process_results
    assert single["num_processes"] == 1
    assert double["num_processes"] == 2


@pytest.mark.parametrize("case", CASES)
def test_two_processes_give_the_single_process_loss(single_and_two_process_results, case):
    single, double = single_and_two_process_results
    assert double[case]["loss"] == pytest.approx(single[case]["loss"], abs=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_two_processes_give_the_single_process_gradients(single_and_two_process_results, case):
    single, double = single_and_two_process_results
    single_gradients, double_gradients = single[case]["gradients"], double[case]["gradients"]
    assert set(single_gradients) == set(double_gradients)
    assert "logit_scale" in single_gradients
    for name, gradient in single_gradients.items():
        torch.testing.assert_close(double_gradients[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_gradient_accumulation_keeps_all_negatives(single_and_two_process_results, loss_type):
    """Two micro-batches of 2 with cached embeddings give exactly the loss and gradients of one batch of 4."""
    single, _ = single_and_two_process_results
    whole, accumulated = single[f"{loss_type}/accumulation1"], single[f"{loss_type}/accumulation2"]
    assert accumulated["loss"] == pytest.approx(whole["loss"], abs=1e-5)
    for name, gradient in whole["gradients"].items():
        torch.testing.assert_close(accumulated["gradients"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)
