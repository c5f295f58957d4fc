"""Benchmark one contrastive training step (forward + backward + AdamW) of LuCaFound sizes, with and without
gradient checkpointing: samples/s and peak memory. Prints JSON and a table.

    python bench/bench_training_step.py                       # tiny only (quick, CPU)
    python bench/bench_training_step.py --sizes tiny,base --batch-size 4 --mixed-precision bf16   # on a GPU

Each (size, checkpointing) case runs in its own subprocess so peak memory is measured per case: on CUDA
`torch.cuda.max_memory_allocated`, on CPU the process's peak resident set (ru_maxrss) and its growth over the
resident set measured just before the first step.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from modeling_lucafound.atomic_files import write_json_atomically  # noqa: E402


def _resident_megabytes():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_case(size, checkpointing, batch_size, steps, mixed_precision, text_length, device_name, image_size=None):
    """Time `steps` optimizer steps after one warm-up step; returns a dict of measurements."""
    import torch

    from modeling_lucafound.configuration_lucafound import lucafound_config_for_size
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel
    from train.pretrain import ContrastiveTrainingModule, contrastive_loss, parameter_groups, set_tower_trainability

    device = torch.device(device_name)
    torch.manual_seed(0)
    config = lucafound_config_for_size(size, vocab_size=4096)
    model = LuCaFoundModel(config)
    set_tower_trainability(model, contrastive_loss_type="clip")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device).train()
    module = ContrastiveTrainingModule(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.2), lr=1e-4)
    depth, height, width = image_size or config.vision_config.image_size
    pixel_values = torch.rand(batch_size, 1, depth, height, width, device=device)
    input_ids = torch.randint(5, 4096, (batch_size, text_length), device=device)
    attention_mask = torch.ones_like(input_ids)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            image_embeds, text_embeds, logit_scale, logit_bias = module(pixel_values, input_ids, attention_mask)
        loss = contrastive_loss(image_embeds, text_embeds, logit_scale, logit_bias, "clip", False)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    resident_before = _resident_megabytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    result = {
        "size": size,
        "gradient_checkpointing": checkpointing,
        "batch_size": batch_size,
        "image_size": [depth, height, width],
        "text_length": text_length,
        "mixed_precision": mixed_precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores visible)",
        "parameters_millions": sum(parameter.numel() for parameter in model.parameters()) / 1e6,
        "steps": steps,
        "seconds_per_step": elapsed / steps,
        "samples_per_second": batch_size * steps / elapsed,
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_memory_mb"] = peak
        result["peak_memory_growth_mb"] = peak - resident_before
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny", help="comma-separated: tiny, small, base (base is slow on CPU)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--text-length", type=int, default=128)
    parser.add_argument("--image-size", type=int, nargs=3, help="volume size instead of each size's default")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    options = parser.parse_args(argv)
    import torch

    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if options.case:
        size, checkpointing = options.case.split(":")
        print(json.dumps(run_case(size, checkpointing == "1", options.batch_size, options.steps,
                                  options.mixed_precision, options.text_length, device, options.image_size)))
        return None
    results = []
    for size in [name.strip() for name in options.sizes.split(",") if name.strip()]:
        for checkpointing in (False, True):
            command = [sys.executable, __file__, "--case", f"{size}:{int(checkpointing)}",
                       "--batch-size", str(options.batch_size), "--steps", str(options.steps),
                       "--mixed-precision", options.mixed_precision, "--text-length", str(options.text_length),
                       "--device", device] + (["--image-size", *map(str, options.image_size)] if options.image_size else [])
            completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
            if completed.returncode != 0:
                results.append({"size": size, "gradient_checkpointing": checkpointing,
                                "error": completed.stderr.strip().splitlines()[-1:]})
                continue
            results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(json.dumps(results, indent=2))
    header = f"{'size':<6} {'ckpt':<5} {'batch':>5} {'precision':<9} {'samples/s':>10} {'s/step':>8} {'peak MB':>9}"
    print(header)
    print("-" * len(header))
    for result in results:
        if "error" in result:
            print(f"{result['size']:<6} {str(result['gradient_checkpointing']):<5} error: {result['error']}")
            continue
        print(f"{result['size']:<6} {str(result['gradient_checkpointing']):<5} {result['batch_size']:>5} "
              f"{result['mixed_precision']:<9} {result['samples_per_second']:>10.3f} {result['seconds_per_step']:>8.3f} "
              f"{result['peak_memory_mb']:>9.0f}")
    if options.json:
        write_json_atomically(options.json, results)
    return results


if __name__ == "__main__":
    main()
