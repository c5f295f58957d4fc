"""`lucafound model-card DIR`: write the Hub model card (README.md) into a saved folder, filled with its own figures.

The template is `model_card.md` at the repository root. Figures come from the folder itself: `config.json`
(architecture), the weights (parameter count), the image processor config (preprocessing), `eval_results.json`
(task metrics with bootstrap intervals, as `train/finetune.py` writes them), `pretrain_metrics.json` (retrieval
metrics) and `card_data.json` (datasets, training data and procedure text), each optional.
"""

import json
import re
from pathlib import Path

from ..atomic_files import write_text_atomically

# In a checkout (editable install) the template is the repository's model_card.md; a wheel ships a copy in the package.
_PACKAGED_TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"
TEMPLATE_PATH = _PACKAGED_TEMPLATE if _PACKAGED_TEMPLATE.is_file() else Path(__file__).resolve().parents[2] / "model_card.md"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def _read_json(path):
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _image_processor_config(folder):
    config = _read_json(folder / "preprocessor_config.json")
    if config is None:
        config = (_read_json(folder / "processor_config.json") or {}).get("image_processor")
    return config or {}


def count_parameters(folder):
    """Number of stored parameters in the folder's safetensors weights (read from the headers only)."""
    from safetensors import safe_open

    total = 0
    for weights in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(weights), framework="numpy") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                size = 1
                for dimension in shape:
                    size *= dimension
                total += size
    return total


def _format_parameters(count):
    if count >= 1e6:
        return f"{count / 1e6:.1f} M"
    if count >= 1e3:
        return f"{count / 1e3:.1f} k"
    return str(count)


def _size(values):
    return " x ".join(str(value) for value in values) if values else "unknown"


def metrics_table(metrics):
    """Markdown table of `{name: {"value", "ci_lower", "ci_upper"}}` or `{name: number}` metrics."""
    lines = ["| Metric | Value | 95% CI |", "|---|---|---|"]
    for name, value in metrics.items():
        if isinstance(value, dict):
            interval = ""
            if value.get("ci_lower") is not None and value.get("ci_upper") is not None:
                interval = f"{_number(value['ci_lower'])} - {_number(value['ci_upper'])}"
            lines.append(f"| {name} | {_number(value.get('value'))} | {interval} |")
        elif isinstance(value, (int, float)):
            lines.append(f"| {name} | {_number(value)} | |")
    return "\n".join(lines)


def _number(value):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:
            return "n/a (undefined on this split)"
        return f"{value:.3f}"
    return str(value)


def card_fields(folder, model_name=None, model_path=None, example_ct="chest_ct.nii.gz"):
    """Every placeholder of the template, filled from the files of `folder`."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if config is None:
        from ..embedding import NotALuCaFoundModelError

        raise NotALuCaFoundModelError(f"{str(folder)!r} has no config.json: pass a saved LuCaFound model folder.")
    vision = config.get("vision_config") or (config if config.get("model_type") == "lucafound_vision_model" else {})
    text = config.get("text_config") or {}
    processor = _image_processor_config(folder)
    card_data = _read_json(folder / "card_data.json") or {}
    evaluation = _read_json(folder / "eval_results.json")
    retrieval = _read_json(folder / "pretrain_metrics.json")
    embed_dim = vision.get("embed_dim", 128)
    depths = vision.get("depths", [2, 2, 18, 2])
    feature_size = embed_dim * 2 ** (len(depths) - 1)
    sections = []
    if evaluation:
        task = card_data.get("evaluation_task", "Fine-tuned task")
        sections.append(f"{task}:\n\n{metrics_table(evaluation)}")
    if retrieval:
        sections.append(f"CT-report retrieval after pretraining:\n\n{metrics_table(retrieval)}")
    if card_data.get("evaluation_notes"):
        sections.append(card_data["evaluation_notes"])
    datasets = card_data.get("datasets") or ["synthetic-lung-ct"]
    if text:
        text_encoder = (
            f"{text.get('model_type', 'bert')}, hidden {text.get('hidden_size')}, {text.get('num_hidden_layers')} layers"
        )
    else:
        text_encoder = "none (CT encoder only)"
    return {
        "model_name": model_name or card_data.get("model_name") or folder.resolve().name,
        "model_path": model_path or str(folder),
        "example_ct": example_ct,
        "datasets_yaml": "\n".join(f"- {name}" for name in datasets),
        "architecture": ", ".join(config.get("architectures") or ["LuCaFoundModel"]),
        "patch_size": _size(vision.get("patch_size", [2, 4, 4])),
        "embed_dim": str(embed_dim),
        "depths": str(list(depths)),
        "window_size": _size(vision.get("window_size", [8, 7, 7])),
        "input_size": _size(processor.get("output_size") or vision.get("image_size")),
        "hu_window": str(processor.get("hu_window", [-1500.0, 500.0])),
        "crop_margin_mm": _number(float(processor.get("crop_margin_mm", 0.0))),
        "feature_size": str(feature_size),
        "text_encoder": text_encoder,
        "projection_dim": str(config.get("projection_dim", "n/a")),
        "contrastive_loss": str(config.get("contrastive_loss", "clip")).upper(),
        "parameters": _format_parameters(count_parameters(folder)),
        "training_data": card_data.get(
            "training_data", "Not recorded in this folder: add `training_data` to card_data.json."
        ),
        "training_procedure": card_data.get(
            "training_procedure", "Not recorded in this folder: add `training_procedure` to card_data.json."
        ),
        "evaluation": "\n\n".join(sections) or "No evaluation results in this folder (eval_results.json).",
        "data_limitation": card_data.get(
            "data_limitation",
            "Evaluate on your own data before relying on any figure above; the figures come only from the data named "
            "under Training data.",
        ),
    }


def render_model_card(folder, template_path=TEMPLATE_PATH, **field_overrides):
    """The model card text for `folder`: the template with every placeholder filled (an unknown one is an error)."""
    fields = card_fields(folder, **field_overrides)
    if not Path(template_path).is_file():
        raise FileNotFoundError(
            f"model card template {str(template_path)!r} not found: run from a LuCaFound checkout (pip install -e .) "
            "or pass template_path."
        )
    template = Path(template_path).read_text(encoding="utf-8")
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(fields))
    if missing:
        raise KeyError(f"model card template has placeholders without a value: {missing}")
    return PLACEHOLDER.sub(lambda match: fields[match.group(1)], template)


def write_model_card(folder, **field_overrides):
    """Write README.md into `folder` atomically; returns its path."""
    folder = Path(folder)
    text = render_model_card(folder, **field_overrides)
    return write_text_atomically(folder / "README.md", text)


def register(subparsers):
    parser = subparsers.add_parser(
        "model-card",
        help="write the Hub model card (README.md) into a saved model folder, with the folder's own figures",
        description=__doc__,
    )
    parser.add_argument("folder", metavar="DIR", help="saved LuCaFound model folder")
    parser.add_argument("--model-name", help="title of the card (default: the folder's name)")
    parser.add_argument("--repo-id", help="Hub id used in the code examples (default: the folder path)")
    parser.add_argument("--example-ct", default="chest_ct.nii.gz", help="CT path used in the code examples")
    parser.set_defaults(func=run)


def run(args):
    path = write_model_card(args.folder, model_name=args.model_name, model_path=args.repo_id,
                            example_ct=args.example_ct)
    print(path)
    return 0
