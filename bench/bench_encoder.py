"""Benchmark: the LuCaFound CT encoder forward at full size (1x1x48x256x256), side by side in one run.

Measures ours in fp32 and under bf16 autocast, torchvision's `swin3d_b` where torchvision imports (CUDA machines),
the achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) and the fraction of this machine's matmul peak,
measured in the same run. Prints a JSON object and a table.
"""

import argparse
import json
import platform
import sys
import time

import torch

from modeling_lucafound.configuration_lucafound import LuCaFoundVisionConfig
from modeling_lucafound.modeling_lucafound import LuCaFoundVisionModel


def matmul_peak_gflops(dtype, device, size=2048, repeats=5):
    """Best-of-`repeats` throughput of a square matmul, the practical ceiling of this machine."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_flops(model, pixel_values):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=pixel_values)
    return counter.get_total_flops()


def time_forward(forward, device, repeats):
    forward()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        forward()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=3, default=[48, 256, 256])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="write the JSON here too")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = LuCaFoundVisionModel(LuCaFoundVisionConfig()).eval().to(device)
    pixel_values = torch.rand(1, 1, *args.size, device=device)
    flops = count_flops(model, pixel_values)
    print(f"{flops / 1e12:.3f} TFLOP per forward", file=sys.stderr, flush=True)
    results = {
        "machine": platform.node(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "input": [1, 1, *args.size],
        "tflop_per_forward": flops / 1e12,
        "matmul_peak_gflops": {"fp32": matmul_peak_gflops(torch.float32, device),
                               "bf16": matmul_peak_gflops(torch.bfloat16, device)},
        "runs": {},
    }

    def ours_fp32():
        with torch.no_grad():
            return model(pixel_values=pixel_values).pooler_output

    def ours_bf16():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return model(pixel_values=pixel_values).pooler_output

    reference = ours_fp32().float()
    candidates = {"ours_fp32": ours_fp32, "ours_bf16_autocast": ours_bf16}
    try:
        from torchvision.models.video import swin3d_b

        torchvision_model = swin3d_b().eval().to(device)
        torchvision_model.head = torch.nn.Identity()
        state = {key: value for key, value in model.state_dict().items()}
        torchvision_model.load_state_dict(state, strict=False)
        three_channels = pixel_values.expand(-1, 3, -1, -1, -1).contiguous()

        def torchvision_fp32():
            with torch.no_grad():
                return torchvision_model(three_channels)

        candidates["torchvision_fp32"] = torchvision_fp32
    except Exception as error:  # torchvision is not installed on the CPU machines (see HF_NOTES.md)
        results["torchvision"] = f"not measured: {type(error).__name__}: {error}"

    for name, forward in candidates.items():
        best, times = time_forward(forward, device, args.repeats)
        print(f"{name}: best {best:.2f} s over {len(times)} run(s)", file=sys.stderr, flush=True)
        output = forward().float()
        peak = results["matmul_peak_gflops"]["bf16" if "bf16" in name else "fp32"]
        results["runs"][name] = {
            "seconds": best,
            "all_seconds": times,
            "gflops": flops / best / 1e9,
            "fraction_of_matmul_peak": flops / best / 1e9 / peak,
            "max_abs_difference_vs_ours_fp32": (output - reference).abs().max().item(),
            "cosine_vs_ours_fp32": torch.nn.functional.cosine_similarity(output, reference).min().item(),
        }
    baseline = results["runs"].get("torchvision_fp32", results["runs"]["ours_fp32"])["seconds"]
    for run in results["runs"].values():
        run["speedup_vs_baseline"] = baseline / run["seconds"]
    results["baseline"] = "torchvision_fp32" if "torchvision_fp32" in results["runs"] else "ours_fp32"
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text)
    print(f"\n{'run':<22}{'seconds':>10}{'GFLOP/s':>10}{'of peak':>9}{'speed-up':>10}{'max |diff|':>12}")
    for name, run in results["runs"].items():
        print(f"{name:<22}{run['seconds']:>10.2f}{run['gflops']:>10.1f}{run['fraction_of_matmul_peak']:>9.0%}"
              f"{run['speedup_vs_baseline']:>10.2f}{run['max_abs_difference_vs_ours_fp32']:>12.2e}")
    return results


if __name__ == "__main__":
    main()
