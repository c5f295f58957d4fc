"""Zero-shot CT classification with report-prompt ensembles: no training, only the dual encoder's shared space.

Each label is described by several report-style sentences saying the finding is present ("There is a pleural
effusion.") and several saying it is absent ("No pleural effusion."). The normalised text embeddings of each set
are averaged (a prompt ensemble, as in CLIP) and renormalised; a CT is then scored against them with the model's
own temperature. Labels are either independent findings (present vs absent, one probability each) or mutually
exclusive classes (a softmax over the labels' present-prompts).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import LuCaFoundInputError

# Report-style sentences; "{label}" is replaced by the label text. Kept close to how radiology reports word
# findings so that a model pretrained on reports has seen similar sentences.
POSITIVE_TEMPLATES = (
    "{label}.",
    "There is {label}.",
    "Findings consistent with {label}.",
    "CT of the chest shows {label}.",
    "Evidence of {label}.",
    "{label} is present.",
)
NEGATIVE_TEMPLATES = (
    "No {label}.",
    "There is no {label}.",
    "No evidence of {label}.",
    "Negative for {label}.",
    "{label} is not seen.",
    "Without {label}.",
)


class ZeroShotLabelError(LuCaFoundInputError):
    """Labels or prompt templates that cannot be turned into prompts (empty, duplicated, no `{label}` slot)."""


class ZeroShotModelError(LuCaFoundInputError):
    """A model folder that cannot do zero-shot classification (no text tower, no tokenizer, no image processor)."""


@dataclass
class PromptEnsemble:
    """The prompts of one label and their averaged, renormalised text embeddings (projection_dim,)."""

    label: str
    positive_prompts: list
    negative_prompts: list
    positive_embedding: torch.Tensor = field(repr=False, default=None)
    negative_embedding: torch.Tensor = field(repr=False, default=None)


def fill_templates(label, templates):
    """Sentences for `label` from `templates` (each must contain `{label}`); capitalised like report sentences."""
    label = label.strip()
    if not label:
        raise ZeroShotLabelError("zero-shot labels must be non-empty text, e.g. 'pleural effusion'")
    prompts = []
    for template in templates:
        if "{label}" not in template:
            raise ZeroShotLabelError(f"prompt template {template!r} has no '{{label}}' slot for the label text")
        sentence = template.format(label=label)
        prompts.append(sentence[:1].upper() + sentence[1:])
    return prompts


class ZeroShotClassifier:
    """Scores CT volumes against text labels with a `LuCaFoundModel` (dual encoder) and its tokenizer.

    `image_processor` turns volumes (paths, arrays) into `pixel_values`; it is only needed when `classify` gets
    volumes rather than `pixel_values`.
    """

    def __init__(self, model, tokenizer, image_processor=None, positive_templates=POSITIVE_TEMPLATES,
                 negative_templates=NEGATIVE_TEMPLATES, max_length=64):
        for name in ("get_text_features", "get_image_features"):
            if not hasattr(model, name):
                raise ZeroShotModelError(
                    f"zero-shot classification needs a CT-report dual encoder (LuCaFoundModel); {type(model).__name__} "
                    f"has no `{name}`. Use a pretraining output folder, not a fine-tuned task head."
                )
        if not positive_templates or not negative_templates:
            raise ZeroShotLabelError("give at least one positive and one negative prompt template")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.positive_templates = tuple(positive_templates)
        self.negative_templates = tuple(negative_templates)
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, folder, **kwargs):
        """Load the dual encoder, tokenizer and image processor saved in one folder (trust_remote_code)."""
        from pathlib import Path

        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ZeroShotModelError(f"{folder} is not a saved model folder (no config.json); pass --model <folder>")
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        except (OSError, ValueError, TypeError) as error:
            raise ZeroShotModelError(
                f"{folder} has no usable tokenizer ({error}); save the LuCaFoundProcessor next to the model"
            ) from error
        image_processor = None
        # saved alone (preprocessor_config.json) or inside a LuCaFoundProcessor (processor_config.json)
        if (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file():
            image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        return cls(model, tokenizer, image_processor=image_processor, **kwargs)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_prompts(self, prompts):
        """Average of the normalised text embeddings of `prompts`, renormalised: (projection_dim,)."""
        encoding = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        encoding = {key: value.to(self.device) for key, value in encoding.items() if key in ("input_ids", "attention_mask")}
        embeddings = F.normalize(self.model.get_text_features(**encoding).float(), dim=-1)
        return F.normalize(embeddings.mean(dim=0), dim=-1)

    def prompt_ensembles(self, labels):
        """One `PromptEnsemble` per label, with embeddings."""
        labels = [str(label).strip() for label in labels]
        if not labels:
            raise ZeroShotLabelError("give at least one label, e.g. --labels 'pleural effusion' 'lymphadenopathy'")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ZeroShotLabelError(f"labels must be distinct; repeated: {duplicates}")
        ensembles = []
        for label in labels:
            positive = fill_templates(label, self.positive_templates)
            negative = fill_templates(label, self.negative_templates)
            ensembles.append(
                PromptEnsemble(label, positive, negative, self.embed_prompts(positive), self.embed_prompts(negative))
            )
        return ensembles

    @torch.no_grad()
    def image_embeddings(self, images=None, pixel_values=None, spacing=None, series_uid=None):
        """Normalised CT embeddings (B, projection_dim) from volumes (through the image processor) or pixel_values."""
        if pixel_values is None:
            if images is None:
                raise ZeroShotLabelError("give CT volumes (`images`) or `pixel_values` to classify")
            if self.image_processor is None:
                raise ZeroShotModelError(
                    "this classifier has no image processor to read CT volumes; pass `pixel_values` or load a folder "
                    "saved with its LuCaFoundProcessor"
                )
            options = {"series_uid": series_uid} if series_uid else {}
            pixel_values = self.image_processor(images, spacing=spacing, return_tensors="pt", **options)["pixel_values"]
        pixel_values = torch.as_tensor(pixel_values, dtype=torch.float32).to(self.device)
        return F.normalize(self.model.get_image_features(pixel_values=pixel_values).float(), dim=-1)

    @torch.no_grad()
    def classify(self, images=None, labels=(), exclusive=False, pixel_values=None, spacing=None, series_uid=None):
        """Zero-shot probabilities, one dict per CT.

        Independent findings (default): {label: P(present)} from a two-way softmax between the label's present- and
        absent-prompt ensembles. `exclusive=True`: {label: probability} from a softmax over the labels'
        present-prompt ensembles (the labels are alternatives, e.g. histologies). Logits use the model's clamped
        temperature, so probabilities are as sharp as pretraining made them.
        """
        ensembles = self.prompt_ensembles(labels)
        image_embeds = self.image_embeddings(images, pixel_values, spacing, series_uid)
        scale = self.model.clamped_logit_scale().exp().float() if hasattr(self.model, "clamped_logit_scale") else 100.0
        positive = torch.stack([ensemble.positive_embedding for ensemble in ensembles])  # (L, E)
        positive_logits = scale * image_embeds @ positive.t()  # (B, L)
        if exclusive:
            probabilities = positive_logits.softmax(dim=-1)
        else:
            negative = torch.stack([ensemble.negative_embedding for ensemble in ensembles])
            negative_logits = scale * image_embeds @ negative.t()
            probabilities = torch.stack([positive_logits, negative_logits], dim=-1).softmax(dim=-1)[..., 0]
        names = [ensemble.label for ensemble in ensembles]
        return [dict(zip(names, row.tolist())) for row in probabilities.cpu()]


__all__ = [
    "NEGATIVE_TEMPLATES",
    "POSITIVE_TEMPLATES",
    "PromptEnsemble",
    "ZeroShotClassifier",
    "ZeroShotLabelError",
    "ZeroShotModelError",
    "fill_templates",
]
