"""`lucafound demo`: the whole system on the embedded synthetic cohort, in minutes on a laptop CPU.

Steps (all real code paths): generate and preprocess the synthetic chest-CT cohort (datasets builder), pretrain a
tiny dual encoder (`train.pretrain.main`), LoRA fine-tune histology (`train.finetune.main`) and evaluate it, save a
Hub-ready folder (model card, custom pipeline), reload it with `AutoModel.from_pretrained(..., trust_remote_code=True)`
offline, embed a CT file (`lucafound embed`'s library), run a zero-shot query. Prints a summary table and writes
`demo_summary.json` and `demo_summary.md` into `--output-dir`.
"""

import os
import shutil
import sys
import time
from pathlib import Path

from ..atomic_files import atomic_output, write_json_atomically, write_text_atomically

ZERO_SHOT_LABELS = ("spiculated mass", "pleural effusion", "enlarged lymph node")


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="run the whole system on the synthetic cohort: pretrain, LoRA fine-tune, evaluate, save, embed, zero-shot",
        description=__doc__,
    )
    parser.add_argument("--output-dir", default="lucafound-demo", help="where every output goes (default ./lucafound-demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=24, help="patients in the synthetic cohort")
    parser.add_argument("--pretrain-steps", type=int, default=6)
    parser.add_argument("--finetune-steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.set_defaults(func=run)


def _write_json(path, data):
    write_json_atomically(path, data, default=str)


def _write_text(path, text):
    write_text_atomically(path, text)


def _metric_values(metrics):
    return {name: (value.get("value") if isinstance(value, dict) else value) for name, value in metrics.items()}


def run_demo(output_dir, seed=0, num_samples=24, pretrain_steps=6, finetune_steps=6, batch_size=4):
    """Run every step; returns the summary dict (also written as demo_summary.json / .md)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    repository = Path(__file__).resolve().parents[2]
    if str(repository) not in sys.path:  # train/ and datasets_scripts/ live next to the package in a checkout
        sys.path.insert(0, str(repository))
    from train import finetune, pretrain
    from train.data import load_dataset_splits

    from ..configuration_lucafound import lucafound_config_for_size

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = output_dir / "cache"
    steps = []
    started = time.perf_counter()

    def step(name, started_at, result):
        seconds = time.perf_counter() - started_at
        steps.append({"step": name, "seconds": round(seconds, 1), "result": result})
        print(f"[demo] {name}: {result} ({seconds:.1f} s)", file=sys.stderr, flush=True)

    # 1. generate + preprocess the synthetic cohort (cached; pretraining and fine-tuning reuse it)
    t = time.perf_counter()
    image_size = list(lucafound_config_for_size("tiny").vision_config.image_size)
    splits = load_dataset_splits("synthetic", num_samples=num_samples, image_size=image_size, seed=seed,
                                 cache_dir=str(cache_dir))
    sizes = {name: len(split) for name, split in splits.items()}
    step("generate + preprocess cohort", t, f"{num_samples} patients, splits {sizes}, pixel_values {image_size}")

    # 2. contrastive pretraining (train/pretrain.py)
    t = time.perf_counter()
    pretrained = pretrain.main([
        "--dataset", "synthetic", "--num-samples", str(num_samples), "--model-size", "tiny",
        "--max-steps", str(pretrain_steps), "--batch-size", str(batch_size), "--warmup-steps", "1",
        "--output-dir", str(output_dir / "pretrain"), "--cache-dir", str(cache_dir), "--seed", str(seed),
        "--checkpoint-every", "0", "--eval-every", "0", "--report-to", "none", "--no-progress-bar",
    ])
    pretrain_metrics = {key: value for key, value in pretrained["metrics"].items() if key.startswith("eval/")}
    step("pretrain (CLIP, tiny)", t, f"{pretrained['steps']} steps, loss {pretrained['metrics'].get('loss', float('nan')):.3f}, "
         f"i2t R@1 {pretrain_metrics.get('eval/i2t_r1', float('nan')):.2f}")

    # 3. LoRA fine-tuning + evaluation (train/finetune.py)
    t = time.perf_counter()
    finetuned = finetune.main([
        "--base", pretrained["final_dir"], "--task", "histology", "--dataset", "synthetic",
        "--num-samples", str(num_samples), "--method", "lora", "--max-steps", str(finetune_steps),
        "--batch-size", str(batch_size), "--eval-batch-size", str(batch_size), "--cache-dir", str(cache_dir),
        "--output-dir", str(output_dir / "finetune"), "--seed", str(seed), "--bootstrap-resamples", "200",
    ])
    evaluation = _metric_values(finetuned["eval_results"])
    step("LoRA fine-tune + evaluate (histology)", t,
         f"{finetuned['trainable_fraction']:.1%} trainable, on {finetuned['evaluated_on']}: "
         + ", ".join(f"{name} {value:.3f}" for name, value in evaluation.items()))

    # 4. Hub-ready folder: the pretrained model + processor, custom pipeline, its evaluation, model card
    t = time.perf_counter()
    from ..pipeline_lucafound import add_feature_extraction_pipeline
    from .model_card import write_model_card
    from .push import check_hub_folder, files_to_upload

    hub_dir = output_dir / "lucafound-tiny-demo"
    if hub_dir.exists():
        shutil.rmtree(hub_dir)
    shutil.copytree(pretrained["final_dir"], hub_dir)
    from ..embedding import load_image_processor

    # preprocessor_config.json too: AutoImageProcessor, pipelines and zero-shot find the image processor there
    load_image_processor(hub_dir).save_pretrained(hub_dir)
    add_feature_extraction_pipeline(hub_dir)
    _write_json(hub_dir / "eval_results.json", finetuned["eval_results"])
    _write_json(hub_dir / "pretrain_metrics.json", pretrain_metrics)
    _write_json(hub_dir / "card_data.json", {
        "model_name": "LuCaFound tiny (demo)",
        "datasets": ["synthetic-lung-ct"],
        "training_data": f"The embedded synthetic chest-CT cohort (procedural phantoms with tumours and templated "
                         f"reports): {num_samples} patients, seed {seed}, patient-level splits {sizes}.",
        "training_procedure": f"CLIP contrastive pretraining of the tiny configuration for {pretrained['steps']} steps "
                              f"(batch {batch_size}, AdamW, cosine schedule), then LoRA fine-tuning of histology for "
                              f"{finetune_steps} steps ({finetuned['trainable_fraction']:.1%} of parameters trained).",
        "evaluation_task": f"Histology (LoRA fine-tune, {finetuned['evaluated_on']} split, bootstrap 95% CI)",
        "data_limitation": "This demo model is trained for a few steps on synthetic phantoms: its features and "
                           "figures show that the system runs, not that it reads real CTs.",
    })
    write_model_card(hub_dir)
    check_hub_folder(hub_dir)
    step("save Hub-ready folder", t, f"{hub_dir.name}: {len(files_to_upload(hub_dir))} files, README.md model card")

    # 5. reload offline with trust_remote_code, as a user without this package would
    t = time.perf_counter()
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(hub_dir, trust_remote_code=True)
    remote = type(reloaded).__module__.startswith("transformers_modules")
    step("reload with AutoModel (trust_remote_code, offline)", t,
         f"{type(reloaded).__name__} from {'the folder code' if remote else type(reloaded).__module__}")

    # 6. embed a CT file written in a real format
    t = time.perf_counter()
    from datasets_scripts.phantoms import generate_chest_phantom

    from ..embedding import embed_ct_scans, read_feature_table

    ct_path = output_dir / "example_ct.nii.gz"
    phantom = generate_chest_phantom(seed + 10_000, shape=(48, 128, 128), spacing=(6.0, 2.8, 2.8))
    _write_nifti(ct_path, phantom)
    summary = embed_ct_scans([ct_path], hub_dir, output_dir / "features.parquet", num_workers=0, progress=False,
                             overwrite=True)
    table, _ = read_feature_table(output_dir / "features.parquet")
    step("embed a CT volume", t, f"{summary.embedded} embedded ({summary.feature_size}-d), crop box "
         f"{[[int(value) for value in axis] for axis in table['crop_bbox'][0]]}")

    # 7. zero-shot query against report prompts
    t = time.perf_counter()
    from ..zero_shot import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_pretrained(hub_dir)
    probabilities = classifier.classify(images=str(ct_path), labels=list(ZERO_SHOT_LABELS))[0]
    step("zero-shot query", t, ", ".join(f"{label} {value:.2f}" for label, value in probabilities.items()))

    total = time.perf_counter() - started
    result = {
        "output_dir": str(output_dir),
        "seed": seed,
        "num_samples": num_samples,
        "total_seconds": round(total, 1),
        "steps": steps,
        "pretrain_metrics": pretrain_metrics,
        "finetune_metrics": evaluation,
        "hub_dir": str(hub_dir),
        "features": str(output_dir / "features.parquet"),
        "zero_shot": probabilities,
        "finetune_report": finetuned.get("report"),
    }
    table_text = summary_table(steps, total)
    _write_json(output_dir / "demo_summary.json", result)
    _write_text(output_dir / "demo_summary.md", "# LuCaFound demo\n\n" + table_text + "\n")
    print(table_text)
    return result


def _write_nifti(path, phantom):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(phantom.hu)
    image.SetSpacing(tuple(float(value) for value in phantom.spacing[::-1]))
    image.SetOrigin(tuple(float(value) for value in phantom.origin))
    with atomic_output(path, suffix=".nii.gz") as temporary:
        sitk.WriteImage(image, str(temporary))


def summary_table(steps, total_seconds):
    """Markdown table: one line per demo step with its result and time."""
    lines = ["| Step | Result | Seconds |", "|---|---|---|"]
    for entry in steps:
        lines.append(f"| {entry['step']} | {entry['result']} | {entry['seconds']:.1f} |")
    lines.append(f"| **total** | | **{total_seconds:.1f}** |")
    return "\n".join(lines)


def run(args):
    run_demo(args.output_dir, seed=args.seed, num_samples=args.num_samples, pretrain_steps=args.pretrain_steps,
             finetune_steps=args.finetune_steps, batch_size=args.batch_size)
    return 0
