"""Downstream fine-tuning of a pretrained LuCaFound CT encoder: histology, EGFR, stage, survival or any label column,
with PEFT LoRA, full fine-tuning or a linear probe on cached features, evaluated with bootstrap confidence intervals.

Run with `python train/finetune.py ...` or `accelerate launch train/finetune.py ...` (Trainer handles devices and
processes). Outputs in `--output-dir`:

    eval_results.json    metric name -> {value, ci_lower, ci_upper, confidence, bootstrap_resamples}
    run_summary.json     task, method, split sizes, trainable/total parameters, per-fold results, timings
    predictions.csv      one row per evaluated patient (labels and predicted probabilities or risk)
    base_model/          (lora) the encoder + freshly initialised head the adapter applies to (trust_remote_code)
    adapter/             (lora) the PEFT adapter: LoRA weights + the fully trained head (`modules_to_save`)
    model/               (full) the fine-tuned model
    probe.json           (linear-probe) standardisation and coefficients
    report.html + *.png  ROC curves, confusion matrix, Kaplan-Meier curves of predicted risk groups

Reload a LoRA result::

    base = AutoModelForImageClassification.from_pretrained("OUT/base_model", trust_remote_code=True)
    model = PeftModel.from_pretrained(base, "OUT/adapter").merge_and_unload()

(`AutoModel` instead for survival: its head is registered under AutoModel.)
"""

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python train/finetune.py`: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_lucafound.errors import LuCaFoundInputError  # noqa: E402

logger = logging.getLogger("lucafound.finetune")

TASK_ALIASES = {"histology": "histology", "egfr": "egfr", "stage": "stage", "survival": "survival"}
METHODS = ("lora", "full", "linear-probe")
DEFAULT_TARGET_MODULES = ("attn.qkv", "attn.proj", "mlp.0", "mlp.3")
MISSING_LABEL_STRINGS = {"", "na", "n/a", "nan", "none", "unknown", "not collected"}


class FinetuneOptionError(LuCaFoundInputError):
    """A fine-tuning option that cannot work with the given model folder or dataset."""


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def build_argument_parser():
    parser = argparse.ArgumentParser(
        prog="finetune.py",
        description="Fine-tune a pretrained LuCaFound CT encoder on a downstream task (LoRA, full or linear probe).",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--task", default="histology",
                      help="histology, egfr, stage, survival, or any label column of the dataset (default histology)")
    data.add_argument("--dataset", default="synthetic", help="builder short name (synthetic, nsclc-radiomics, ...)")
    data.add_argument("--data-dir", help="local folder of the collection (not needed for synthetic)")
    data.add_argument("--num-samples", type=int, default=64, help="patients in the synthetic cohort (default 64)")
    data.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                      help="extra builder-config field, value as JSON (e.g. phantom_shape=[48,96,96]); repeatable")
    data.add_argument("--image-size", type=int, nargs=3, metavar=("D", "H", "W"),
                      help="size of pixel_values (default: the base encoder's configured image_size)")
    data.add_argument("--cache-dir", help="datasets cache folder for the built dataset")
    data.add_argument("--build-processes", type=int, default=1,
                      help="processes that build (generate / preprocess) the dataset the first time; 1 = in this one")
    data.add_argument("--patient-column", default="patient_id", help="patient id column (splits and folds by patient)")
    data.add_argument("--duration-column", default="survival_days", help="survival: follow-up time column")
    data.add_argument("--event-column", default="event", help="survival: event indicator column (1 event, 0 censored)")
    data.add_argument("--positive-classes", nargs="+", metavar="CLASS",
                      help="turn a multi-class label into binary: these classes vs the rest (e.g. III IV)")
    data.add_argument("--augment", action="store_true", help="MONAI random augmentation of training volumes")

    model = parser.add_argument_group("model")
    model.add_argument("--base", required=True,
                       help="folder of a pretrained LuCaFoundModel / LuCaFoundVisionModel (pretraining or conversion)")
    model.add_argument("--method", choices=METHODS, default="lora")
    model.add_argument("--lora-r", type=int, default=8)
    model.add_argument("--lora-alpha", type=float, default=16.0)
    model.add_argument("--lora-dropout", type=float, default=0.0)
    model.add_argument("--target-modules", nargs="+", default=list(DEFAULT_TARGET_MODULES),
                       help="LoRA targets: module-name suffixes inside the encoder (default: attention and MLP linears)")
    model.add_argument("--classifier-dropout", type=float, default=0.0)
    model.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=float, default=10.0)
    training.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps (> 0)")
    training.add_argument("--batch-size", type=int, default=8)
    training.add_argument("--eval-batch-size", type=int, default=8)
    training.add_argument("--gradient-accumulation-steps", type=int, default=1)
    training.add_argument("--learning-rate", type=float, default=None,
                          help="default 1e-3 for lora, 5e-5 for full")
    training.add_argument("--weight-decay", type=float, default=0.01)
    training.add_argument("--warmup-ratio", type=float, default=0.1)
    training.add_argument("--class-weighting", choices=("balanced", "none"), default="balanced",
                          help="weight the loss by inverse class frequency (default balanced)")
    training.add_argument("--k-folds", type=int, default=0,
                          help="patient-level k-fold cross-validation over all labelled patients (0: use the splits)")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPUs that support it)")

    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", required=True)
    output.add_argument("--last-epoch", action="store_true",
                        help="evaluate the model of the last epoch (default: the epoch with the best validation "
                             "AUROC, or C-index for survival, when there is a validation split)")
    output.add_argument("--bootstrap-resamples", type=int, default=1000)
    output.add_argument("--save-merged", action="store_true", help="(lora) also save the merged model in merged/")
    output.add_argument("--no-report", action="store_true", help="skip the PNG/HTML report")
    return parser


def parse_dataset_options(pairs):
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise FinetuneOptionError(f"--dataset-option needs KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


# --------------------------------------------------------------------------------------------------------------
# Task: which columns, which classes
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TaskSpecification:
    """What is predicted: a class label (`class_names`) or survival (`duration_column`, `event_column`)."""

    name: str
    kind: str  # "classification" or "survival"
    label_column: str = None
    class_names: list = None
    source_class_names: list = None  # before grouping by --positive-classes
    positive_classes: list = None
    duration_column: str = None
    event_column: str = None

    @property
    def head_module(self):
        return "risk_head" if self.kind == "survival" else "classifier"

    @property
    def model_label_names(self):
        return ["event", "duration"] if self.kind == "survival" else ["labels"]


def _is_missing(value):
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_LABEL_STRINGS


def resolve_task(args, splits):
    """Read the task's columns and classes from the dataset (ClassLabel names, else the values seen)."""
    import datasets

    first = next(iter(splits.values()))
    columns = first.column_names
    if args.task == "survival":
        for column in (args.duration_column, args.event_column):
            if column not in columns:
                raise FinetuneOptionError(
                    f"survival needs the columns {args.duration_column!r} and {args.event_column!r}; "
                    f"{args.dataset!r} has {columns} (set --duration-column / --event-column)"
                )
        if args.positive_classes:
            raise FinetuneOptionError("--positive-classes applies to class labels, not to survival")
        return TaskSpecification("survival", "survival", duration_column=args.duration_column, event_column=args.event_column)
    column = TASK_ALIASES.get(args.task, args.task)
    if column not in columns:
        raise FinetuneOptionError(
            f"dataset {args.dataset!r} has no label column {column!r}; label columns to choose from: "
            f"{[name for name in columns if name not in ('pixel_values', 'crop_bbox', 'spacing', 'report', 'findings')]}"
        )
    feature = first.features[column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    else:
        values = set()
        for split in splits.values():
            values.update(value for value in split[column] if not _is_missing(value))
        if any(isinstance(value, float) and not float(value).is_integer() for value in values):
            raise FinetuneOptionError(f"column {column!r} holds continuous values; fine-tuning predicts classes or survival")
        names = [str(value) for value in sorted(values)]
    task = TaskSpecification(column, "classification", label_column=column, class_names=names, source_class_names=names)
    if args.positive_classes:
        unknown = [name for name in args.positive_classes if name not in names]
        if unknown:
            raise FinetuneOptionError(f"--positive-classes {unknown} are not classes of {column!r}: {names}")
        negative = [name for name in names if name not in args.positive_classes]
        if not negative:
            raise FinetuneOptionError("--positive-classes must leave at least one class on the negative side")
        task.positive_classes = list(args.positive_classes)
        task.class_names = ["/".join(negative), "/".join(args.positive_classes)]
    if len(task.class_names) < 2:
        raise FinetuneOptionError(f"column {column!r} has fewer than two classes ({task.class_names}); nothing to learn")
    return task


def encoded_labels(task, dataset):
    """(row indices with a usable label, their targets): class indices, or (duration, event) pairs for survival."""
    import datasets

    if task.kind == "survival":
        durations = dataset[task.duration_column]
        events = dataset[task.event_column]
        rows, targets = [], []
        for row, (duration, event) in enumerate(zip(durations, events)):
            if _is_missing(duration) or _is_missing(event) or float(duration) < 0:
                continue
            rows.append(row)
            targets.append((float(duration), int(event)))
        return rows, targets
    feature = dataset.features[task.label_column]
    values = dataset[task.label_column]
    rows, targets = [], []
    for row, value in enumerate(values):
        if isinstance(feature, datasets.ClassLabel):
            if value is None or value < 0:
                continue
            name = feature.names[value]
        else:
            if _is_missing(value):
                continue
            name = str(value)
        index = task.source_class_names.index(name)
        if task.positive_classes is not None:
            index = int(name in task.positive_classes)
        rows.append(row)
        targets.append(index)
    return rows, targets


def labelled_dataset(task, dataset):
    """The rows with a usable label, with the model's target columns (`labels` or `duration` + `event`) added."""
    rows, targets = encoded_labels(task, dataset)
    subset = dataset.select(rows)
    for name in task.model_label_names:
        if name in subset.column_names:
            subset = subset.remove_columns(name)
    if task.kind == "survival":
        subset = subset.add_column("duration", [duration for duration, _ in targets])
        subset = subset.add_column("event", [event for _, event in targets])
    else:
        subset = subset.add_column("labels", targets)
    return subset


class TaskCollator:
    """Batch for the task model: `pixel_values` (B, 1, D, H, W) plus `labels` or `event` + `duration`."""

    def __init__(self, task):
        self.label_names = task.model_label_names

    def __call__(self, examples):
        from train.data import collate_ct_batch

        batch = collate_ct_batch(examples, label_columns=self.label_names)
        if "duration" in batch:
            batch["duration"] = batch["duration"].float()
            batch["event"] = batch["event"].float()
        return batch


def class_weights_for(labels, num_classes):
    """Inverse-frequency weights N / (K x n_c) (sklearn's 'balanced'); absent classes get weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


def read_base_config(base):
    """The base folder's config (trust_remote_code), with a clear error for a missing or foreign folder."""
    from transformers import AutoConfig

    folder = Path(base)
    if not (folder / "config.json").is_file():
        raise FinetuneOptionError(
            f"--base {base} is not a saved model folder (no config.json); give the output folder of pretraining "
            "(train/pretrain.py) or of `lucafound convert`"
        )
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    vision_config = getattr(config, "vision_config", None) or config
    if not hasattr(vision_config, "depths") or not hasattr(vision_config, "image_size"):
        raise FinetuneOptionError(f"--base {base} holds a {config.model_type!r} model, not a LuCaFound CT encoder")
    return config, vision_config


def build_task_model(task, base, classifier_dropout=0.0):
    """A task head on the base folder's CT encoder (encoder weights loaded, head newly initialised)."""
    from modeling_lucafound.modeling_lucafound import LuCaFoundForCTClassification, LuCaFoundForSurvival

    if task.kind == "survival":
        return LuCaFoundForSurvival.from_encoder_pretrained(base, classifier_dropout=classifier_dropout)
    id2label = dict(enumerate(task.class_names))
    return LuCaFoundForCTClassification.from_encoder_pretrained(
        base,
        num_labels=len(task.class_names),
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
        problem_type="single_label_classification",
        classifier_dropout=classifier_dropout,
    )


def parameter_counts(model):
    """(trainable, total) parameter counts; a PEFT `modules_to_save` copy counts once, like PEFT's own report."""
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    return int(trainable), int(total)


def apply_lora(model, task, args):
    """Wrap `model` with PEFT LoRA on the encoder's linears; the task head is trained in full (`modules_to_save`)."""
    from peft import LoraConfig, get_peft_model

    targets = list(args.target_modules)
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        modules_to_save=[task.head_module],
        task_type=None,
        bias="none",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise FinetuneOptionError(
            f"--target-modules {targets} matched no layer of the CT encoder ({error}). Linear layers are named "
            "attn.qkv, attn.proj, mlp.0 and mlp.3."
        ) from error


def main_process_state():
    """Accelerate's view of the processes (one process when not launched distributed); files are written by rank 0."""
    from accelerate import PartialState

    return PartialState()


def make_trainer_class():
    from transformers import Trainer

    class LuCaFoundTaskTrainer(Trainer):
        """Trainer whose classification loss can be class-weighted; losses are per-batch means."""

        loss_is_scaled_for_ga = False

        def __init__(self, *args, class_weights=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.class_weights = class_weights

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.class_weights is None or "labels" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs["logits"]
            loss = torch.nn.functional.cross_entropy(
                logits.float(), labels.to(logits.device), weight=self.class_weights.to(logits.device)
            )
            outputs["loss"] = loss
            return (loss, outputs) if return_outputs else loss

    return LuCaFoundTaskTrainer


def validation_metrics_function(task):
    """Trainer `compute_metrics` for the per-epoch validation (point estimates only; CIs come at the end)."""
    from train.metrics import UndefinedMetricError, accuracy_score, auroc_score, concordance_index

    def compute(prediction):
        predictions = prediction.predictions
        predictions = predictions[0] if isinstance(predictions, tuple) else predictions
        try:
            if task.kind == "survival":
                event, duration = prediction.label_ids
                return {"c_index": concordance_index(np.asarray(predictions).reshape(-1), duration, event)}
            probabilities = torch.softmax(torch.as_tensor(predictions, dtype=torch.float32), dim=-1).numpy()
            labels = np.asarray(prediction.label_ids).reshape(-1)
            return {
                "accuracy": accuracy_score(labels, probabilities.argmax(axis=1)),
                "auroc": auroc_score(labels, probabilities),
            }
        except UndefinedMetricError:
            return {}

    return compute


# --------------------------------------------------------------------------------------------------------------
# One training run (a split, or one fold)
# --------------------------------------------------------------------------------------------------------------


class BestEpochKeeper:
    """Remembers the trainable parameters of the epoch with the best validation metric and puts them back at the
    end, so the held-out evaluation uses the model that validation chose rather than whatever the last epoch left.

    Only trainable tensors are copied (the LoRA weights and the head, or everything in full fine-tuning), in memory.
    """

    def __init__(self, metric_name):
        self.metric_name = f"eval_{metric_name}"
        self.best_value = None
        self.best_epoch = None
        self._best_parameters = None

    def consider(self, model, metrics, epoch):
        value = (metrics or {}).get(self.metric_name)
        if value is None or not np.isfinite(value) or (self.best_value is not None and value <= self.best_value):
            return False
        self.best_value, self.best_epoch = float(value), epoch
        self._best_parameters = {
            name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad
        }
        return True

    def restore(self, model):
        """Load the remembered parameters into `model`; False when no validation produced the metric."""
        if self._best_parameters is None:
            return False
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self._best_parameters:
                    parameter.copy_(self._best_parameters[name])
        return True


def prepare_for_reading(dataset, augmentation=None):
    """Fast numpy reads for evaluation; MONAI augmentation through `set_transform` for training when asked."""
    from train.data import add_example_index, set_ct_transforms

    if augmentation is not None:
        return set_ct_transforms(add_example_index(dataset), augmentation)
    return dataset.with_format("numpy")


def run_trainer(task, args, train_dataset, eval_dataset, predict_dataset, run_dir):
    """Train a LoRA or full model; return (predictions on `predict_dataset`, model, counts, history, base folder)."""
    from transformers import TrainingArguments

    from train.data import CTAugmentation

    torch.manual_seed(args.seed)
    model = build_task_model(task, args.base, args.classifier_dropout)
    base_model_dir = None
    if args.method == "lora":
        # The adapter applies to exactly this encoder + initial head: save it so the adapter reloads from a folder.
        base_model_dir = run_dir / "base_model"
        state = main_process_state()
        if state.is_main_process:
            model.save_pretrained(base_model_dir)
        state.wait_for_everyone()
        model.config._name_or_path = str(base_model_dir.resolve())
        model.name_or_path = str(base_model_dir.resolve())
        model = apply_lora(model, task, args)
    trainable, total = parameter_counts(model)
    logger.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100.0 * trainable / total)

    class_weights = None
    if task.kind == "classification" and args.class_weighting == "balanced":
        class_weights = class_weights_for(train_dataset["labels"], len(task.class_names))
    augmentation = CTAugmentation(seed=args.seed) if args.augment else None
    learning_rate = args.learning_rate or (1e-3 if args.method == "lora" else 5e-5)
    training_arguments = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,
        lr_scheduler_type="cosine",
        logging_steps=max(1, len(train_dataset) // max(1, args.batch_size)),
        eval_strategy="epoch" if eval_dataset is not None and len(eval_dataset) > 1 else "no",
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        label_names=task.model_label_names,
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=args.bf16,
        **({"activation_checkpointing": True} if args.gradient_checkpointing else {}),
        disable_tqdm=True,
    )
    trainer = make_trainer_class()(
        model=model,
        args=training_arguments,
        train_dataset=prepare_for_reading(train_dataset, augmentation),
        eval_dataset=prepare_for_reading(eval_dataset) if training_arguments.eval_strategy != "no" else None,
        data_collator=TaskCollator(task),
        compute_metrics=validation_metrics_function(task),
        class_weights=class_weights,
    )
    if augmentation is not None:
        from transformers import TrainerCallback

        class EpochAugmentation(TrainerCallback):
            def on_epoch_begin(self, arguments, state, control, **kwargs):
                augmentation.set_epoch(int(state.epoch or 0))

        trainer.add_callback(EpochAugmentation())
    keeper = None
    if trainer.eval_dataset is not None and not args.last_epoch:
        from transformers import TrainerCallback

        keeper = BestEpochKeeper("c_index" if task.kind == "survival" else "auroc")

        class KeepBestEpoch(TrainerCallback):
            def on_evaluate(self, arguments, state, control, metrics=None, **kwargs):
                keeper.consider(trainer.model, metrics, state.epoch)

        trainer.add_callback(KeepBestEpoch())
    started = time.time()
    trainer.train()
    training_seconds = time.time() - started
    selected_epoch = None
    if keeper is not None and keeper.restore(trainer.model):
        selected_epoch = keeper.best_epoch
        logger.info("evaluating the epoch %.2f model (best validation %s %.4f)", selected_epoch, keeper.metric_name,
                    keeper.best_value)
    checkpoint_dir = Path(training_arguments.output_dir)
    if checkpoint_dir.is_dir() and not any(checkpoint_dir.iterdir()):
        checkpoint_dir.rmdir()
    output = trainer.predict(prepare_for_reading(predict_dataset))
    predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    history = [entry for entry in trainer.state.log_history if "eval_loss" in entry or "loss" in entry]
    model = trainer.model
    return {
        "predictions": np.asarray(predictions),
        "model": model,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "history": history,
        "base_model_dir": base_model_dir,
        "training_seconds": training_seconds,
        "selected_epoch": selected_epoch,
    }


def run_linear_probe(task, args, train_dataset, predict_dataset, run_dir, encoder):
    """Cached frozen-encoder features, then a logistic or Cox probe with cross-validated regularisation."""
    from train.linear_probe import cached_features, fit_cox_probe, fit_logistic_probe, save_probe

    collator = TaskCollator(task)
    feature_dir = Path(args.output_dir) / "features"
    prefix = "" if run_dir.resolve() == Path(args.output_dir).resolve() else f"{run_dir.name}_"
    started = time.time()
    train_features = cached_features(
        encoder, train_dataset.with_format("numpy"), collator, feature_dir / f"{prefix}train.npz", args.eval_batch_size
    )
    predict_features = cached_features(
        encoder, predict_dataset.with_format("numpy"), collator, feature_dir / f"{prefix}evaluate.npz", args.eval_batch_size
    )
    groups = train_dataset[args.patient_column] if args.patient_column in train_dataset.column_names else np.arange(len(train_dataset))
    if task.kind == "survival":
        probe = fit_cox_probe(train_features, train_dataset["duration"], train_dataset["event"], groups, seed=args.seed)
        predictions = probe.predict_risk(predict_features)
    else:
        class_weight = "balanced" if args.class_weighting == "balanced" else None
        probe = fit_logistic_probe(
            train_features, np.asarray(train_dataset["labels"]), groups, len(task.class_names), class_weight, seed=args.seed
        )
        # the evaluation code takes logits; log-probabilities give the same softmax
        predictions = np.log(np.clip(probe.predict_proba(predict_features), 1e-12, 1.0))
    probe_path = save_probe(probe, run_dir / "probe.json")
    trainable = int(np.asarray(probe.to_dict()["coefficients"]).size)
    total = trainable + sum(parameter.numel() for parameter in encoder.parameters())
    return {
        "predictions": predictions,
        "model": None,
        "trainable_parameters": trainable,
        "total_parameters": int(total),
        "history": [{"cross_validation": probe.cross_validation}],
        "probe_path": probe_path,
        "training_seconds": time.time() - started,
    }


# --------------------------------------------------------------------------------------------------------------
# Evaluation and outputs
# --------------------------------------------------------------------------------------------------------------


def evaluate_predictions(task, dataset, predictions, args):
    """Metrics with bootstrap CIs and the per-patient prediction rows for the report and predictions.csv."""
    from train.metrics import (
        classification_metrics_with_intervals,
        one_vs_rest_auroc,
        survival_metrics_with_intervals,
    )

    patients = dataset[args.patient_column] if args.patient_column in dataset.column_names else list(range(len(dataset)))
    if task.kind == "survival":
        risk = np.asarray(predictions, dtype=np.float64).reshape(-1)
        duration = np.asarray(dataset["duration"], dtype=np.float64)
        event = np.asarray(dataset["event"], dtype=int)
        metrics = survival_metrics_with_intervals(risk, duration, event, args.bootstrap_resamples, seed=args.seed)
        rows = [
            {"patient_id": patient, "risk": float(value), "duration": float(time_), "event": int(flag)}
            for patient, value, time_, flag in zip(patients, risk, duration, event)
        ]
        return metrics, rows, {"risk": risk, "duration": duration, "event": event}
    probabilities = torch.softmax(torch.as_tensor(np.asarray(predictions), dtype=torch.float32), dim=-1).numpy()
    labels = np.asarray(dataset["labels"], dtype=int)
    metrics = classification_metrics_with_intervals(labels, probabilities, args.bootstrap_resamples, seed=args.seed)
    if len(task.class_names) > 2:
        for class_index, value in one_vs_rest_auroc(labels, probabilities).items():
            if value is not None:
                metrics[f"auroc_{task.class_names[class_index]}"] = {"value": value}
    rows = []
    for patient, label, probability in zip(patients, labels, probabilities):
        row = {"patient_id": patient, "label": task.class_names[label], "predicted": task.class_names[int(probability.argmax())]}
        row.update({f"probability_{name}": float(value) for name, value in zip(task.class_names, probability)})
        rows.append(row)
    return metrics, rows, {"labels": labels, "probabilities": probabilities}


def write_text_atomically(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def _without_nan(value):
    """NaN (an undefined metric) -> None, so the file is strict JSON."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def write_json(path, payload):
    text = json.dumps(_without_nan(payload), indent=2, default=_json_default, allow_nan=False)
    return write_text_atomically(path, text + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def write_predictions_csv(path, rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomically(path, buffer.getvalue())


def _splits_for_evaluation(splits):
    """(training split, validation split or None, evaluation split name and split) from a DatasetDict."""
    if "train" not in splits:
        raise FinetuneOptionError(f"the dataset has no train split (splits: {list(splits)})")
    validation = splits["validation"] if "validation" in splits else None
    if "test" in splits:
        return splits["train"], validation, "test", splits["test"]
    if validation is not None:
        logger.warning("no test split: evaluating on the validation split")
        return splits["train"], None, "validation", validation
    raise FinetuneOptionError("the dataset has neither a test nor a validation split to evaluate on; use --k-folds")


def _concatenate_splits(splits):
    import datasets

    return datasets.concatenate_datasets([splits[name] for name in splits])


def fit_and_predict(task, args, train_dataset, eval_dataset, predict_dataset, run_dir, encoder=None):
    if args.method == "linear-probe":
        if eval_dataset is not None:
            import datasets

            # the probe picks its penalty by cross-validation, so the validation patients can join training
            train_dataset = datasets.concatenate_datasets([train_dataset, eval_dataset])
        return run_linear_probe(task, args, train_dataset, predict_dataset, run_dir, encoder)
    return run_trainer(task, args, train_dataset, eval_dataset, predict_dataset, run_dir)


def save_trained_model(result, args, run_dir):
    """Save the adapter (lora) or the model (full); optionally the merged model. Returns the saved folders."""
    saved = {}
    model = result.get("model")
    if model is None or not main_process_state().is_main_process:
        return saved
    if args.method == "lora":
        adapter_dir = run_dir / "adapter"
        model.save_pretrained(adapter_dir)
        saved["adapter_dir"] = str(adapter_dir)
        saved["base_model_dir"] = str(result["base_model_dir"])
        if args.save_merged:
            merged = model.merge_and_unload()
            merged_dir = run_dir / "merged"
            merged.save_pretrained(merged_dir)
            saved["merged_dir"] = str(merged_dir)
    else:
        model_dir = run_dir / "model"
        model.save_pretrained(model_dir)
        saved["model_dir"] = str(model_dir)
    return saved


def main(argv=None):
    """Parse `argv`, fine-tune and evaluate; returns {"output_dir", "eval_results", "adapter_dir", ...}."""
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from transformers import set_seed

    from train.data import load_dataset_splits

    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.k_folds == 1 or args.k_folds < 0:
        raise FinetuneOptionError(f"--k-folds must be 0 (use the splits) or at least 2, got {args.k_folds}")
    if args.build_processes < 1:
        raise FinetuneOptionError(f"--build-processes must be at least 1, got {args.build_processes}")
    _, vision_config = read_base_config(args.base)
    image_size = tuple(args.image_size) if args.image_size else tuple(vision_config.image_size)
    dataset_options = parse_dataset_options(args.dataset_option)
    started = time.time()
    splits = load_dataset_splits(
        args.dataset,
        data_dir=args.data_dir,
        num_samples=args.num_samples if args.dataset in ("synthetic", "SyntheticLungCT") else None,
        image_size=image_size,
        seed=args.seed,
        cache_dir=args.cache_dir,
        num_proc=args.build_processes,
        **dataset_options,
    )
    data_seconds = time.time() - started
    task = resolve_task(args, splits)
    encoder = None
    if args.method == "linear-probe":
        from transformers import AutoModel

        from train.linear_probe import vision_encoder_of

        encoder = vision_encoder_of(AutoModel.from_pretrained(args.base, trust_remote_code=True))
        if torch.cuda.is_available():
            encoder = encoder.cuda()

    summary = {
        "task": dataclasses.asdict(task),
        "method": args.method,
        "dataset": args.dataset,
        "base": str(args.base),
        "image_size": list(image_size),
        "arguments": vars(args),
        "data_seconds": data_seconds,
    }
    if args.k_folds >= 2:
        from train.linear_probe import _group_folds

        pooled = labelled_dataset(task, _concatenate_splits(splits))
        groups = pooled[args.patient_column] if args.patient_column in pooled.column_names else np.arange(len(pooled))
        stratify = pooled["labels"] if task.kind == "classification" else None
        folds = _group_folds(groups, stratify, args.k_folds, args.seed)
        out_of_fold = [None] * len(pooled)
        fold_summaries, saved = [], {}
        for fold_index, (train_rows, held_out_rows) in enumerate(folds):
            run_dir = output_dir / "folds" / f"fold_{fold_index}"
            result = fit_and_predict(
                task, args, pooled.select(train_rows), None, pooled.select(held_out_rows), run_dir, encoder
            )
            fold_metrics, _, _ = evaluate_predictions(task, pooled.select(held_out_rows), result["predictions"], args)
            fold_saved = save_trained_model(result, args, run_dir)
            saved.setdefault("fold_dirs", []).append(str(run_dir))
            for row, prediction in zip(held_out_rows, result["predictions"]):
                out_of_fold[row] = prediction
            fold_summaries.append(
                {
                    "fold": fold_index,
                    "train_patients": len(train_rows),
                    "held_out_patients": len(held_out_rows),
                    "metrics": {name: value["value"] for name, value in fold_metrics.items()},
                    "trainable_parameters": result["trainable_parameters"],
                    "total_parameters": result["total_parameters"],
                    **fold_saved,
                }
            )
        evaluation_dataset, evaluation_name = pooled, f"{len(folds)}-fold out-of-fold"
        predictions = np.stack(out_of_fold)
        summary["folds"] = fold_summaries
        trainable, total = fold_summaries[0]["trainable_parameters"], fold_summaries[0]["total_parameters"]
        summary["training_seconds"] = None
    else:
        train_split, validation_split, evaluation_name, evaluation_split = _splits_for_evaluation(splits)
        train_dataset = labelled_dataset(task, train_split)
        validation_dataset = labelled_dataset(task, validation_split) if validation_split is not None else None
        evaluation_dataset = labelled_dataset(task, evaluation_split)
        if len(train_dataset) == 0 or len(evaluation_dataset) == 0:
            raise FinetuneOptionError(
                f"no labelled patients for {task.name!r} in the train or {evaluation_name} split "
                f"({len(train_dataset)} and {len(evaluation_dataset)}); use more samples or another task"
            )
        result = fit_and_predict(task, args, train_dataset, validation_dataset, evaluation_dataset, output_dir, encoder)
        predictions = result["predictions"]
        saved = save_trained_model(result, args, output_dir)
        if "probe_path" in result:
            saved["probe_path"] = str(result["probe_path"])
        trainable, total = result["trainable_parameters"], result["total_parameters"]
        summary["history"] = result["history"]
        summary["training_seconds"] = result["training_seconds"]
        summary["selected_epoch"] = result.get("selected_epoch")
        summary["split_sizes"] = {
            "train": len(train_dataset),
            "validation": len(validation_dataset) if validation_dataset is not None else 0,
            evaluation_name: len(evaluation_dataset),
        }

    metrics, rows, arrays = evaluate_predictions(task, evaluation_dataset, predictions, args)
    if not main_process_state().is_main_process:
        return {"output_dir": str(output_dir), "eval_results": metrics}
    summary.update(
        {
            "evaluated_on": evaluation_name,
            "evaluated_patients": len(evaluation_dataset),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_fraction": trainable / total,
            **saved,
        }
    )
    write_json(output_dir / "eval_results.json", metrics)
    write_predictions_csv(output_dir / "predictions.csv", rows)
    report_files = {}
    if not args.no_report:
        from train.report import write_report

        report_files = write_report(output_dir, task, metrics, arrays, summary)
        summary["report"] = {name: str(path) for name, path in report_files.items()}
    summary["total_seconds"] = time.time() - started
    write_json(output_dir / "run_summary.json", summary)
    logger.info("evaluation on %s (%d patients): %s", evaluation_name, len(evaluation_dataset),
                {name: round(value["value"], 4) for name, value in metrics.items()})
    return {
        "output_dir": str(output_dir),
        "eval_results": metrics,
        "adapter_dir": saved.get("adapter_dir"),
        "base_model_dir": saved.get("base_model_dir"),
        "model_dir": saved.get("model_dir"),
        "merged_dir": saved.get("merged_dir"),
        "probe_path": saved.get("probe_path"),
        "fold_dirs": saved.get("fold_dirs"),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_fraction": trainable / total,
        "evaluated_on": evaluation_name,
        "report": {name: str(path) for name, path in report_files.items()},
    }


if __name__ == "__main__":
    try:
        main()
    except LuCaFoundInputError as error:
        print(f"finetune.py: error: {error}", file=sys.stderr)
        sys.exit(2)
