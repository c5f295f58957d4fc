"""Contrastive pretraining of LuCaFound on CT-report pairs with Accelerate: one CPU for a smoke run, many GPUs
and nodes without code changes (`python`, `torchrun` or `accelerate launch train/pretrain.py ...`).

The loss is computed on the global batch: every process's embeddings are gathered with gradients, so N processes
x b samples give the loss and gradients of one process with N*b samples. Gradient accumulation keeps every
negative (embeddings of all micro-batches are cached first, as in open_clip). Checkpoints are written into a
temporary folder, marked complete, then renamed, so a crash never leaves a checkpoint that looks complete.
"""

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # `python train/pretrain.py` from a checkout: make `train` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_lucafound.errors import LuCaFoundInputError
from modeling_lucafound.losses import clip_contrastive_loss, siglip_contrastive_loss

logger = logging.getLogger("lucafound.pretrain")

MAXIMUM_LOGIT_SCALE = math.log(100.0)
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"
TRAINING_STATE_FILE = "training_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
INCOMPLETE_PREFIX = ".incomplete-"
DEFAULT_CONFIG_FOLDER = Path(__file__).resolve().parent / "configs"


class PretrainingOptionError(LuCaFoundInputError):
    """A command-line or YAML option that cannot be used (unknown key, impossible combination)."""


class CheckpointNotFoundError(LuCaFoundInputError):
    """`--resume` names a folder that is not a complete pretraining checkpoint."""


# --------------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------------


def _dataset_option(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    import yaml

    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="train/pretrain.py",
        description=(
            "Contrastive CT-report pretraining of LuCaFound with Accelerate. Run with `python` (one process), "
            "`torchrun --nproc_per_node N` or `accelerate launch --config_file train/configs/<setup>.yaml`."
        ),
    )
    parser.add_argument("--config", help="YAML file whose keys set any of the options below (command line wins)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="synthetic", help="builder short name from datasets_scripts (default: synthetic)")
    data.add_argument("--data-dir", help="local folder of the collection (not needed for synthetic)")
    data.add_argument("--cache-dir", help="datasets cache folder for the built dataset")
    data.add_argument("--build-processes", type=int, default=1,
                      help="processes that build (generate / preprocess) the dataset the first time; 1 = in this one")
    data.add_argument("--num-samples", type=int, help="number of patients of the synthetic cohort")
    data.add_argument("--dataset-option", action="append", type=_dataset_option, default=[], metavar="KEY=VALUE",
                      help="extra builder-config field, e.g. phantom_shape=[64,128,128] (repeatable)")
    data.add_argument("--text-column", help="column with the report text (default: report, else text)")
    data.add_argument("--max-text-length", type=int, help="tokens per report (default: the text tower's limit, at most 256)")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes per training process")
    data.add_argument("--no-augment", action="store_true", help="switch off the MONAI random augmentations")
    data.add_argument("--flip-probability", type=float, default=0.0,
                      help="probability of each axis flip (default 0: reports name sides and lobes)")
    model = parser.add_argument_group("model")
    model.add_argument("--model-size", default="tiny", choices=["tiny", "small", "base"],
                       help="tiny for CPU smoke runs; base = Swin3D-B + BERT-base")
    model.add_argument("--init-vision", help="folder of a LuCaFound CT encoder (from `lucafound convert`)")
    model.add_argument("--init-text", help="Hub id or folder of a text encoder (its tokenizer is used)")
    model.add_argument("--contrastive-loss", choices=["clip", "siglip"], default="clip")
    model.add_argument("--text-pooling", choices=["cls", "mean"],
                       help="report embedding from the [CLS] token or the mean of the tokens (default: the text "
                            "encoder's own; a new text tower starts near-identical for every report under CLS)")
    model.add_argument("--tokenizer-vocab-size", type=int, default=4096,
                       help="vocabulary of the report tokenizer trained on the training reports (no --init-text)")
    model.add_argument("--freeze-vision", action="store_true", help="lock the CT tower (LiT); projections still train")
    model.add_argument("--freeze-text", action="store_true", help="lock the text tower; projections still train")
    model.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--max-steps", type=int, default=100, help="optimizer steps")
    optim.add_argument("--batch-size", type=int, default=8, help="samples per process per micro-batch")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1,
                       help="micro-batches per optimizer step; all their samples are negatives of each other")
    optim.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    optim.add_argument("--weight-decay", type=float, default=0.2, help="AdamW decay (not on norms, biases, logit scale)")
    optim.add_argument("--warmup-steps", type=int, default=10, help="linear warm-up steps before the cosine decay")
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    optim.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="default: Accelerate's config")
    optim.add_argument("--seed", type=int, default=42)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", default="outputs/pretrain", help="checkpoints, metrics.jsonl, final/")
    run.add_argument("--resume", help="checkpoint folder, or `latest` (newest complete checkpoint in --output-dir)")
    run.add_argument("--checkpoint-every", type=int, default=50, help="save_state every N steps (0: only at the end)")
    run.add_argument("--keep-checkpoints", type=int, default=3, help="newest complete checkpoints kept (0: all)")
    run.add_argument("--eval-every", type=int, default=50, help="validation retrieval every N steps (0: only at the end)")
    run.add_argument("--log-every", type=int, default=1, help="write a metrics.jsonl line every N steps")
    run.add_argument("--report-to", default="tensorboard", help="Accelerate tracker(s), comma-separated, or none")
    run.add_argument("--no-progress-bar", action="store_true")
    return parser


def parse_options(argv=None):
    """Parse `argv`; a `--config` YAML file supplies defaults that the command line overrides."""
    parser = build_parser()
    preliminary, _ = parser.parse_known_args(argv)
    if preliminary.config:
        config_path = Path(preliminary.config)
        if not config_path.is_file() and (DEFAULT_CONFIG_FOLDER / config_path.name).is_file():
            config_path = DEFAULT_CONFIG_FOLDER / config_path.name
        if not config_path.is_file():
            raise PretrainingOptionError(f"--config {preliminary.config}: file not found")
        import yaml

        values = yaml.safe_load(config_path.read_text()) or {}
        if not isinstance(values, dict):
            raise PretrainingOptionError(f"{config_path} must hold a mapping of option names to values")
        known = {action.dest for action in parser._actions}
        defaults = {}
        for key, value in values.items():
            destination = str(key).replace("-", "_")
            if destination not in known or destination in ("help", "config"):
                raise PretrainingOptionError(
                    f"{config_path}: unknown option {key!r}; use the long option names of `--help` (e.g. max-steps)"
                )
            if destination == "dataset_option":
                value = [(str(name), item) for name, item in dict(value).items()]
            defaults[destination] = value
        parser.set_defaults(**defaults)
    options = parser.parse_args(argv)
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "build_processes"):
        if getattr(options, name) < 1:
            raise PretrainingOptionError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}")
    if options.freeze_vision and options.freeze_text:
        raise PretrainingOptionError("--freeze-vision and --freeze-text together leave only the projections to train")
    return options


# --------------------------------------------------------------------------------------------------------------
# Model, loss and one optimizer step
# --------------------------------------------------------------------------------------------------------------


class ContrastiveTrainingModule(nn.Module):
    """What Accelerate wraps (DDP/FSDP/DeepSpeed): runs the dual encoder and returns normalised embeddings and the
    (clamped) logit scale and bias, so every parameter is used inside the wrapped forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        outputs = self.model(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, return_loss=False,
            return_dict=True,
        )
        return outputs.image_embeds, outputs.text_embeds, self.model.clamped_logit_scale(), self.model.logit_bias


def contrastive_loss(image_embeds, text_embeds, logit_scale, logit_bias, loss_type, gather_distributed):
    """CLIP or SigLIP loss in float32 over the global batch (embeddings gathered with gradients when distributed)."""
    image_embeds, text_embeds = image_embeds.float(), text_embeds.float()
    logit_scale = logit_scale.float()
    if loss_type == "siglip":
        return siglip_contrastive_loss(image_embeds, text_embeds, logit_scale, logit_bias.float(), gather_distributed)
    return clip_contrastive_loss(image_embeds, text_embeds, logit_scale, gather_distributed)


def _gradient_sync(accelerator, module, synchronise):
    """Context of one backward pass: gradients all-reduced (or the DeepSpeed step taken) only when `synchronise`."""
    accelerator.gradient_state._set_sync_gradients(synchronise)
    if synchronise:
        return contextlib.nullcontext()
    return accelerator.no_sync(module)


def contrastive_training_step(accelerator, module, micro_batches, loss_type):
    """Forward and backward of one optimizer step over `micro_batches`.

    Returns (global-batch loss, logit scale, logit bias), detached; the scale and bias are the values the
    forward used, readable even where the parameters themselves are sharded (FSDP).

    With one micro-batch this is the plain global-batch loss. With several, embeddings of every micro-batch are
    computed first without gradients; then each micro-batch is recomputed with gradients and its loss taken
    against the cached embeddings of all the others, so every sample keeps all negatives and the summed
    gradients equal those of one big batch. The logit scale and bias take their gradient in the last pass only
    (else they would get it once per micro-batch), which is also the pass that synchronises gradients.
    """
    gather = accelerator.num_processes > 1
    if len(micro_batches) == 1:
        with _gradient_sync(accelerator, module, True):
            image_embeds, text_embeds, logit_scale, logit_bias = module(**micro_batches[0])
            loss = contrastive_loss(image_embeds, text_embeds, logit_scale, logit_bias, loss_type, gather)
            accelerator.backward(loss)
        return _global_mean(accelerator, loss.detach()), logit_scale.detach(), logit_bias.detach()
    with torch.no_grad():
        cached = [module(**micro_batch)[:2] for micro_batch in micro_batches]
    cached_images = [image.float() for image, _ in cached]
    cached_texts = [text.float() for _, text in cached]
    last = len(micro_batches) - 1
    for index, micro_batch in enumerate(micro_batches):
        with _gradient_sync(accelerator, module, index == last):
            image_embeds, text_embeds, logit_scale, logit_bias = module(**micro_batch)
            if index != last:
                logit_scale, logit_bias = logit_scale.detach(), logit_bias.detach()
            all_images = torch.cat(cached_images[:index] + [image_embeds.float()] + cached_images[index + 1:])
            all_texts = torch.cat(cached_texts[:index] + [text_embeds.float()] + cached_texts[index + 1:])
            loss = contrastive_loss(all_images, all_texts, logit_scale, logit_bias, loss_type, gather)
            accelerator.backward(loss)
    return _global_mean(accelerator, loss.detach()), logit_scale.detach(), logit_bias.detach()


def _global_mean(accelerator, value):
    """The mean of a per-process scalar over processes (the global-batch loss for the losses used here)."""
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.reshape(1), reduction="mean")[0]


def parameter_groups(model, weight_decay):
    """AdamW groups: decay on weight matrices; none on norms, biases, logit scale/bias and position-bias tables."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = parameter.ndim < 2 or "logit_" in name or "relative_position_bias_table" in name or "norm" in name
        (no_decay if exempt else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def set_tower_trainability(model, freeze_vision=False, freeze_text=False, contrastive_loss_type="clip"):
    """Lock the CT or text tower (LiT-style) and the SigLIP bias under CLIP, where it takes no part in the loss."""
    for parameter in model.vision_model.parameters():
        parameter.requires_grad_(not freeze_vision)
    for parameter in model.text_model.parameters():
        parameter.requires_grad_(not freeze_text)
    model.logit_bias.requires_grad_(contrastive_loss_type == "siglip")


def set_training_mode(wrapped_module, model, freeze_vision=False, freeze_text=False):
    """Train mode, with locked towers in eval mode (no dropout or stochastic depth where nothing learns).

    `wrapped_module` is what Accelerate returned (DDP/FSDP wrapper), `model` the LuCaFoundModel inside it.
    """
    wrapped_module.train()
    if freeze_vision:
        model.vision_model.eval()
    if freeze_text:
        model.text_model.eval()


def build_tokenizer(options, train_texts, checkpoint=None):
    """The report tokenizer: a resumed checkpoint's, the `--init-text` encoder's, or one trained on the reports."""
    if checkpoint is not None and (checkpoint / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(checkpoint / "tokenizer")
    if options.init_text:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(options.init_text)
    from modeling_lucafound.report_tokenizer import train_report_tokenizer

    return train_report_tokenizer(train_texts, vocab_size=options.tokenizer_vocab_size)


def build_model(options, tokenizer):
    """A `LuCaFoundModel` of `--model-size`, or from `--init-vision` / `--init-text` with new projections."""
    from modeling_lucafound.configuration_lucafound import lucafound_config_for_size
    from modeling_lucafound.modeling_lucafound import LuCaFoundModel, LuCaFoundTextModel, LuCaFoundVisionModel

    config = lucafound_config_for_size(
        options.model_size, vocab_size=len(tokenizer), contrastive_loss=options.contrastive_loss,
        text_pooling=options.text_pooling,
    )
    if not options.init_vision and not options.init_text:
        return LuCaFoundModel(config)
    if options.init_vision:
        if not Path(options.init_vision).is_dir():
            raise PretrainingOptionError(
                f"--init-vision {options.init_vision}: not a folder; pass the output folder of `lucafound convert`"
            )
        vision_model = LuCaFoundVisionModel.from_pretrained(options.init_vision)
    else:
        vision_model = LuCaFoundVisionModel(config.vision_config)
    if options.init_text:
        from transformers import AutoModel

        text_model = AutoModel.from_pretrained(options.init_text)
    else:
        text_model = LuCaFoundTextModel(config.text_config)
    return LuCaFoundModel.from_vision_text_pretrained(
        vision_model, text_model, projection_dim=config.projection_dim, contrastive_loss=options.contrastive_loss,
        text_pooling=options.text_pooling,
    )


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def _fsync_folder(folder):
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_json_atomically(path, payload):
    """Write JSON through a temporary file in the same folder, flushed to disk, then `os.replace`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def is_complete_checkpoint(folder):
    folder = Path(folder)
    return folder.is_dir() and (folder / COMPLETE_MARKER).is_file() and (folder / TRAINING_STATE_FILE).is_file()


def find_latest_checkpoint(output_dir):
    """The newest complete checkpoint under `output_dir/checkpoints`, or None (incomplete ones are ignored)."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    complete = [path for path in folder.glob(f"{CHECKPOINT_PREFIX}*") if is_complete_checkpoint(path)]
    return max(complete, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX):]), default=None)


def save_checkpoint(accelerator, output_dir, step, tokenizer, training_state, keep=0):
    """`accelerator.save_state` into `.incomplete-checkpoint-N`, then the state file and the completion marker,
    then a rename to `checkpoint-N`. Every process takes part (sharded optimizers save their own part)."""
    checkpoints = Path(output_dir) / "checkpoints"
    name = f"{CHECKPOINT_PREFIX}{step:08d}"
    temporary = checkpoints / f"{INCOMPLETE_PREFIX}{name}"
    destination = checkpoints / name
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tokenizer.save_pretrained(temporary / "tokenizer")
        write_json_atomically(temporary / TRAINING_STATE_FILE, training_state)
        write_json_atomically(temporary / COMPLETE_MARKER, {"step": step, "time": time.time()})
        if destination.exists():
            stale = checkpoints / f"{INCOMPLETE_PREFIX}stale-{name}"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(destination, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(temporary, destination)
        _fsync_folder(checkpoints)
        if keep:
            complete = sorted(
                (path for path in checkpoints.glob(f"{CHECKPOINT_PREFIX}*") if is_complete_checkpoint(path)),
                key=lambda path: int(path.name[len(CHECKPOINT_PREFIX):]),
            )
            for old in complete[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return destination


def resolve_resume(options):
    """The checkpoint folder to resume from, or None; `latest` with no checkpoint yet starts from scratch."""
    if not options.resume:
        return None
    if options.resume == "latest":
        latest = find_latest_checkpoint(options.output_dir)
        if latest is None:
            logger.warning("--resume latest: no complete checkpoint in %s yet, starting from step 0", options.output_dir)
        return latest
    folder = Path(options.resume)
    if not is_complete_checkpoint(folder):
        raise CheckpointNotFoundError(
            f"--resume {folder}: not a complete checkpoint (needs {COMPLETE_MARKER} and {TRAINING_STATE_FILE}; "
            "folders named .incomplete-* were interrupted while saving). Use --resume latest to pick the newest "
            "complete one."
        )
    return folder


# --------------------------------------------------------------------------------------------------------------
# Data loading and evaluation
# --------------------------------------------------------------------------------------------------------------


def _to_device(batch, device):
    return {name: value.to(device, non_blocking=True) for name, value in batch.items()}


def _model_inputs(batch):
    return {name: batch[name] for name in ("pixel_values", "input_ids", "attention_mask")}


def training_batches(dataset, collate, options, steps_per_epoch, start_step, augmentation, device):
    """Yield lists of `gradient_accumulation_steps` micro-batches, one per optimizer step, from `start_step` on.

    The order of each epoch depends only on (seed, epoch); resuming starts the sampler at the right example.
    """
    from torch.utils.data import DataLoader

    from train.data import EpochShuffleSampler

    per_step = options.batch_size * options.gradient_accumulation_steps
    epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
    while True:
        if augmentation is not None:
            augmentation.set_epoch(epoch)
        sampler = EpochShuffleSampler(len(dataset), seed=options.seed, epoch=epoch, start=step_in_epoch * per_step)
        loader = DataLoader(
            dataset,
            batch_size=options.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=options.num_workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(options.seed + epoch),
        )
        micro_batches = []
        for batch in loader:
            micro_batches.append(_to_device(batch, device))
            if len(micro_batches) == options.gradient_accumulation_steps:
                yield epoch, micro_batches
                micro_batches = []
                step_in_epoch += 1
                if step_in_epoch >= steps_per_epoch:
                    break
        epoch, step_in_epoch = epoch + 1, 0


@torch.no_grad()
def evaluate_retrieval(accelerator, module, dataset, collate, batch_size):
    """R@1/5/10 in both directions over the whole evaluation split; each process embeds a strided share."""
    from torch.utils.data import DataLoader, Subset

    from train.retrieval import retrieval_metrics

    count = len(dataset)
    processes, rank = accelerator.num_processes, accelerator.process_index
    per_process = math.ceil(count / processes)
    indices = [(rank + processes * position) % count for position in range(per_process)]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    was_training = module.training
    module.eval()
    images, texts = [], []
    for batch in loader:
        image_embeds, text_embeds, _, _ = module(**_model_inputs(_to_device(batch, accelerator.device)))
        images.append(image_embeds.float())
        texts.append(text_embeds.float())
    if was_training:
        module.train()
    local_indices = torch.tensor(indices, device=accelerator.device)
    all_indices = accelerator.gather(local_indices).cpu()
    all_images = accelerator.gather(torch.cat(images)).cpu()
    all_texts = accelerator.gather(torch.cat(texts)).cpu()
    first_position = {}
    for position, index in enumerate(all_indices.tolist()):
        first_position.setdefault(index, position)
    order = torch.tensor([first_position[index] for index in range(count)])
    return retrieval_metrics(all_images[order], all_texts[order], prefix="eval/")


# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


class MetricsLog:
    """`OUTPUT/metrics.jsonl`: one JSON object per logged step (main process), flushed line by line."""

    def __init__(self, path, enabled, resume_step=None):
        self.path = Path(path)
        self.enabled = enabled
        if enabled and resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line.strip()
                    and json.loads(line).get("step", 0) <= resume_step]
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            temporary.write_text("".join(line + "\n" for line in kept))
            os.replace(temporary, self.path)
        elif enabled and resume_step is None and self.path.exists():
            self.path.unlink()

    def write(self, entry):
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()


def save_final_model(accelerator, module, tokenizer, image_size, output_dir):
    """`OUTPUT/final/`: the `LuCaFoundModel` with its processor (image processor + tokenizer), loadable with
    `AutoModel.from_pretrained(..., trust_remote_code=True)`; written beside, then renamed into place."""
    from modeling_lucafound.image_processing_lucafound import LuCaFoundImageProcessor
    from modeling_lucafound.processing_lucafound import LuCaFoundProcessor

    final = Path(output_dir) / "final"
    temporary = Path(output_dir) / f"{INCOMPLETE_PREFIX}final"
    state_dict = accelerator.get_state_dict(module)  # gathers sharded (FSDP/ZeRO) weights; every process calls it
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        model = accelerator.unwrap_model(module).model
        prefix = "model."
        state_dict = {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state_dict.items()}
        model.save_pretrained(temporary, state_dict=state_dict)
        processor = LuCaFoundProcessor(
            image_processor=LuCaFoundImageProcessor(output_size=tuple(image_size)), tokenizer=tokenizer
        )
        processor.save_pretrained(temporary)
        if final.exists():
            stale = Path(output_dir) / f"{INCOMPLETE_PREFIX}stale-final"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(temporary, final)
        _fsync_folder(Path(output_dir))
    accelerator.wait_for_everyone()
    return final


def build_accelerator(mixed_precision=None, trackers=None, project_dir=None):
    """The run's `Accelerator`. Without a GPU, Accelerate joins a torchrun process group only when told to use
    the CPU (else every process would train alone), hence `cpu=True` there."""
    from accelerate import Accelerator

    return Accelerator(
        mixed_precision=mixed_precision, log_with=trackers or None,
        project_dir=str(project_dir) if project_dir is not None else None, cpu=not _has_accelerator_device(),
    )


def _has_accelerator_device():
    """True when a CUDA/ROCm, XPU or MPS device is present (then Accelerate picks it; else the CPU backend)."""
    if torch.cuda.is_available():
        return True
    for name in ("xpu", "mps"):
        backend = getattr(torch, name, None) or getattr(torch.backends, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return False


def _tracker_config(options):
    return {key: value for key, value in vars(options).items() if isinstance(value, (int, float, str, bool))}


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def main(argv=None):
    """Run pretraining; returns {"output_dir", "final_dir", "checkpoint_dir", "steps", "metrics": {...}}."""
    options = parse_options(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    from train.data import (
        CTAugmentation,
        add_example_index,
        collate_ct_batch,
        load_dataset_splits,
        report_column,
        set_ct_transforms,
        shard_for_process,
    )

    output_dir = Path(options.output_dir)
    trackers = [name for name in options.report_to.split(",") if name and name != "none"]
    accelerator = build_accelerator(options.mixed_precision, trackers, output_dir)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    resume_from = resolve_resume(options)
    resume_state = json.loads((resume_from / TRAINING_STATE_FILE).read_text()) if resume_from else None

    # Data: the main process builds the cache first, the others then read it.
    from modeling_lucafound.configuration_lucafound import lucafound_config_for_size

    if options.init_vision:
        from modeling_lucafound.configuration_lucafound import LuCaFoundVisionConfig

        image_size = list(LuCaFoundVisionConfig.from_pretrained(options.init_vision).image_size)
    else:
        image_size = list(lucafound_config_for_size(options.model_size).vision_config.image_size)
    with accelerator.main_process_first():
        splits = load_dataset_splits(
            options.dataset, data_dir=options.data_dir, num_samples=options.num_samples, image_size=image_size,
            seed=options.seed, cache_dir=options.cache_dir, num_proc=options.build_processes,
            **dict(options.dataset_option),
        )
    if "train" not in splits:
        raise PretrainingOptionError(f"dataset {options.dataset!r} has no train split (splits: {list(splits)})")
    train_split = splits["train"]
    text_column = report_column(train_split, options.text_column)
    eval_name = next((name for name in ("validation", "test") if name in splits and len(splits[name]) > 1), None)

    set_seed(options.seed)
    tokenizer = build_tokenizer(options, train_split[text_column], checkpoint=resume_from)
    model = build_model(options, tokenizer)
    set_tower_trainability(model, options.freeze_vision, options.freeze_text, options.contrastive_loss)
    if options.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    text_limit = getattr(model.config.text_config, "max_position_embeddings", 512)
    max_text_length = options.max_text_length or min(256, text_limit)
    collate = functools.partial(collate_ct_batch, tokenizer=tokenizer, text_column=text_column,
                                max_length=max_text_length)

    per_process = len(train_split) // accelerator.num_processes
    per_step = options.batch_size * options.gradient_accumulation_steps
    steps_per_epoch = per_process // per_step
    if steps_per_epoch < 1:
        raise PretrainingOptionError(
            f"the train split has {len(train_split)} examples: too few for {accelerator.num_processes} process(es) x "
            f"batch {options.batch_size} x {options.gradient_accumulation_steps} accumulation steps. Lower "
            "--batch-size or use more samples."
        )
    train_shard = shard_for_process(add_example_index(train_split), accelerator.process_index,
                                    accelerator.num_processes)
    augmentation = None if options.no_augment else CTAugmentation(seed=options.seed,
                                                                  flip_probability=options.flip_probability)
    set_ct_transforms(train_shard, augmentation)
    eval_split = set_ct_transforms(splits[eval_name]) if eval_name else None

    module = ContrastiveTrainingModule(model)
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        # No DataLoader goes through `prepare` (each process shards its own data), so DeepSpeed is told the
        # micro-batch here; its own accumulation stays 1 (accumulation with feature caching happens above it).
        deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config
        deepspeed_config["train_micro_batch_size_per_gpu"] = options.batch_size
        deepspeed_config["gradient_accumulation_steps"] = 1
    optimizer = torch.optim.AdamW(parameter_groups(model, options.weight_decay), lr=options.lr, betas=(0.9, 0.98),
                                  eps=1e-6)
    module, optimizer = accelerator.prepare(module, optimizer)
    # One scheduler step per optimizer step whatever the process count (not prepared: Accelerate would step it
    # once per process), saved and restored with the checkpoints.
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(options.warmup_steps, options.max_steps),
                                                options.max_steps)
    accelerator.register_for_checkpointing(scheduler)
    if trackers:
        accelerator.init_trackers("lucafound-pretrain", config=_tracker_config(options))

    start_step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start_step = int(resume_state["step"])
        logger.info("resumed from %s at step %d", resume_from, start_step)
    metrics_log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process,
                             resume_step=start_step if resume_from is not None else None)
    unwrapped = accelerator.unwrap_model(module).model
    set_training_mode(module, unwrapped, options.freeze_vision, options.freeze_text)

    from tqdm.auto import tqdm

    progress = tqdm(total=options.max_steps, initial=start_step, desc="pretrain", unit="step",
                    disable=options.no_progress_bar or not accelerator.is_local_main_process)
    global_batch = per_step * accelerator.num_processes
    eval_metrics, last_entry, checkpoint_dir = {}, {}, None
    step = start_step
    batches = training_batches(train_shard, collate, options, steps_per_epoch, start_step, augmentation,
                               accelerator.device)
    window_start = time.perf_counter()
    window_samples = 0
    while step < options.max_steps:
        epoch, micro_batches = next(batches)
        loss, logit_scale, logit_bias = contrastive_training_step(
            accelerator, module, [_model_inputs(b) for b in micro_batches], options.contrastive_loss
        )
        if options.max_grad_norm and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(module.parameters(), options.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            unwrapped.logit_scale.clamp_(0.0, MAXIMUM_LOGIT_SCALE)
        step += 1
        window_samples += global_batch
        progress.update(1)
        is_last = step == options.max_steps
        if step % options.log_every == 0 or is_last:
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            last_entry = {
                "step": step,
                "epoch": epoch,
                "loss": float(loss),
                "lr": scheduler.get_last_lr()[0],
                "logit_scale": float(logit_scale.float()),
                "temperature_scale": float(logit_scale.float().exp()),
                "samples_per_second": window_samples / elapsed,
                "global_batch_size": global_batch,
            }
            if options.contrastive_loss == "siglip":
                last_entry["logit_bias"] = float(logit_bias.float())
            metrics_log.write(last_entry)
            accelerator.log({f"train/{key}": value for key, value in last_entry.items() if key != "step"}, step=step)
            progress.set_postfix(loss=f"{last_entry['loss']:.4f}")
            window_start, window_samples = time.perf_counter(), 0
        if eval_split is not None and ((options.eval_every and step % options.eval_every == 0) or is_last):
            eval_metrics = evaluate_retrieval(accelerator, module, eval_split, collate, options.batch_size)
            set_training_mode(module, unwrapped, options.freeze_vision, options.freeze_text)
            entry = {"step": step, "eval_split": eval_name, **eval_metrics}
            metrics_log.write(entry)
            accelerator.log({key: value for key, value in eval_metrics.items()}, step=step)
            if accelerator.is_main_process:
                logger.info("step %d %s retrieval: %s", step, eval_name,
                            {key: round(value, 4) for key, value in eval_metrics.items()})
        if (options.checkpoint_every and step % options.checkpoint_every == 0) or is_last:
            checkpoint_dir = save_checkpoint(
                accelerator, output_dir, step, tokenizer,
                {"step": step, "epoch": epoch, "steps_per_epoch": steps_per_epoch,
                 "num_processes": accelerator.num_processes, "global_batch_size": global_batch},
                keep=options.keep_checkpoints,
            )
    progress.close()
    final_dir = save_final_model(accelerator, module, tokenizer, image_size, output_dir)
    accelerator.end_training()
    metrics = dict(last_entry)
    metrics.update(eval_metrics)
    return {
        "output_dir": str(output_dir),
        "final_dir": str(final_dir),
        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
        "steps": step,
        "metrics": metrics,
    }


if __name__ == "__main__":
    try:
        main()
    except LuCaFoundInputError as error:
        print(f"train/pretrain.py: error: {error}", file=sys.stderr)
        sys.exit(2)
