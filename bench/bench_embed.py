"""Benchmark `lucafound embed` end to end (read, lung crop, resize, encode, Parquet): volumes per second.

Writes synthetic chest CTs as NIfTI files, saves a randomly initialised LuCaFound model of the chosen size with its
image processor, and runs `embed_ct_scans` on them. Prints one JSON object and a table.

    python bench/bench_embed.py --model-size tiny --num-volumes 8 --num-workers 2
    python bench/bench_embed.py --model-size base --device cuda --dtype bfloat16 --batch-size 4   # released shape
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_lucafound.atomic_files import write_json_atomically  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--num-volumes", type=int, default=8)
    parser.add_argument("--volume-shape", type=int, nargs=3, default=[96, 256, 256], metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[3.0, 1.4, 1.4], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    import torch

    from datasets_scripts.phantoms import generate_chest_phantom
    from modeling_lucafound.configuration_lucafound import lucafound_config_for_size
    from modeling_lucafound.embedding import embed_ct_scans, resolve_device
    from modeling_lucafound.image_processing_lucafound import LuCaFoundImageProcessor
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel

    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(args.workdir or temporary)
        scans = workdir / "scans"
        scans.mkdir(parents=True, exist_ok=True)
        for seed in range(args.num_volumes):
            phantom = generate_chest_phantom(seed, shape=tuple(args.volume_shape), spacing=tuple(args.spacing))
            image = sitk.GetImageFromArray(phantom.hu)
            image.SetSpacing(tuple(args.spacing[::-1]))
            sitk.WriteImage(image, str(scans / f"ct{seed:04d}.nii.gz"))
        config = lucafound_config_for_size(args.model_size)
        model_dir = workdir / "model"
        LuCaFoundModel(config).save_pretrained(model_dir)
        LuCaFoundImageProcessor(output_size=config.vision_config.image_size).save_pretrained(model_dir)
        output = workdir / "features.parquet"
        summary = embed_ct_scans([scans], model_dir, output, batch_size=args.batch_size, num_workers=args.num_workers,
                                 device=args.device, dtype=args.dtype, overwrite=True, progress=False)

    result = {
        "benchmark": "embed_end_to_end",
        "model_size": args.model_size,
        "input_size": list(config.vision_config.image_size),
        "volume_shape": args.volume_shape,
        "num_volumes": args.num_volumes,
        "embedded": summary.embedded,
        "failed": summary.failed,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": str(resolve_device(args.device)),
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "seconds": round(summary.seconds, 2),
        "volumes_per_second": round(summary.scans_per_second, 3),
    }
    print(json.dumps(result))
    if args.json:
        write_json_atomically(args.json, result)
    print(f"{'model':>8} {'input':>14} {'volumes':>8} {'workers':>8} {'device':>7} {'seconds':>8} {'vol/s':>7}")
    print(f"{args.model_size:>8} {'x'.join(map(str, result['input_size'])):>14} {args.num_volumes:>8} "
          f"{args.num_workers:>8} {result['device']:>7} {result['seconds']:>8.2f} {result['volumes_per_second']:>7.3f}")
    return result


if __name__ == "__main__":
    main()
