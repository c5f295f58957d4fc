"""Configurations of the LuCaFound family: the 3D Swin CT encoder, the report text encoder and the dual encoder."""

from transformers import AutoConfig, PreTrainedConfig


def _require_positive(name, values):
    """Raise a ValueError naming `name` unless every entry of `values` is a positive number."""
    values = values if isinstance(values, (list, tuple)) else [values]
    if not values or any(not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 for value in values):
        raise ValueError(f"`{name}` must hold positive numbers, got {values!r}.")


def _require_length(name, values, length):
    if len(values) != length:
        raise ValueError(f"`{name}` must have {length} entries (depth, height, width), got {list(values)!r}.")


def _require_probability(name, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")


class LuCaFoundVisionConfig(PreTrainedConfig):
    """Configuration of the 3D Swin transformer CT encoder (torchvision `swin3d_*` field names).

    Defaults are Swin3D-B over a lung-cropped (48, 256, 256) CT, the architecture of the released LuCaFound
    weights. `in_channels` is the channel count of the stored patch-embedding kernel (3, the Kinetics layout);
    1-channel input is accepted at run time by folding that kernel.
    """

    model_type = "lucafound_vision_model"
    base_config_key = "vision_config"

    patch_size: list[int] | tuple[int, ...] = (2, 4, 4)
    embed_dim: int = 128
    depths: list[int] | tuple[int, ...] = (2, 2, 18, 2)
    num_heads: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    window_size: list[int] | tuple[int, ...] = (8, 7, 7)
    mlp_ratio: float = 4.0
    stochastic_depth_prob: float = 0.1
    dropout: float = 0.0
    attention_dropout: float = 0.0
    in_channels: int = 3
    image_size: list[int] | tuple[int, ...] = (48, 256, 256)
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        for name in ("patch_size", "window_size", "image_size"):
            values = list(getattr(self, name))
            _require_length(name, values, 3)
            _require_positive(name, values)
            setattr(self, name, values)
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        _require_positive("depths", self.depths)
        _require_positive("num_heads", self.num_heads)
        _require_positive("embed_dim", self.embed_dim)
        _require_positive("mlp_ratio", self.mlp_ratio)
        _require_positive("in_channels", self.in_channels)
        _require_positive("layer_norm_eps", self.layer_norm_eps)
        if len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"`depths` ({self.depths}) and `num_heads` ({self.num_heads}) must have the same length: one entry per stage."
            )
        for stage, heads in enumerate(self.num_heads):
            stage_dim = self.embed_dim * 2**stage
            if stage_dim % heads:
                raise ValueError(
                    f"`embed_dim` ({self.embed_dim}) gives stage {stage} a width of {stage_dim}, which is not divisible by "
                    f"`num_heads[{stage}]` ({heads})."
                )
        _require_probability("stochastic_depth_prob", self.stochastic_depth_prob)
        _require_probability("dropout", self.dropout)
        _require_probability("attention_dropout", self.attention_dropout)
        super().__post_init__(**kwargs)

    @property
    def hidden_size(self):
        """Width of the pooled CT feature: embed_dim x 2^(stages - 1), 1024 for Swin3D-B."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def num_stages(self):
        return len(self.depths)


class LuCaFoundTextConfig(PreTrainedConfig):
    """Configuration of the BERT-style report encoder (BERT field names); `pooling` is "cls" or "mean"."""

    model_type = "lucafound_text_model"
    base_config_key = "text_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    pooling: str = "cls"

    def __post_init__(self, **kwargs):
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            _require_positive(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` ({self.num_attention_heads})."
            )
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"`pooling` must be 'cls' or 'mean', got {self.pooling!r}.")
        _require_probability("hidden_dropout_prob", self.hidden_dropout_prob)
        _require_probability("attention_probs_dropout_prob", self.attention_probs_dropout_prob)
        super().__post_init__(**kwargs)


CONTRASTIVE_LOSSES = ("clip", "siglip")


class LuCaFoundConfig(PreTrainedConfig):
    """Configuration of the LuCaFound dual encoder and its task heads.

    `text_config` may be a `LuCaFoundTextConfig` (or its dict) or the config of any Hub text encoder (a dict with
    its own `model_type`), as in transformers' VisionTextDualEncoder. `contrastive_loss` is "clip" (symmetric
    InfoNCE, learnable temperature) or "siglip" (pairwise sigmoid with a learnable bias).
    """

    model_type = "lucafound"
    sub_configs_defaults = {"vision_config": LuCaFoundVisionConfig, "text_config": LuCaFoundTextConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    logit_bias_init_value: float = -10.0
    contrastive_loss: str = "clip"
    text_pooling: str | None = None
    initializer_range: float = 0.02
    # task heads (LuCaFoundForCTClassification / LuCaFoundForSurvival)
    classifier_dropout: float = 0.0
    freeze_vision_encoder: bool = False

    def __post_init__(self, **kwargs):
        if isinstance(self.text_config, dict):
            model_type = self.text_config.get("model_type", LuCaFoundTextConfig.model_type)
            if model_type != LuCaFoundTextConfig.model_type:
                options = {key: value for key, value in self.text_config.items() if key != "model_type"}
                self.text_config = AutoConfig.for_model(model_type, **options)
        _require_positive("projection_dim", self.projection_dim)
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"`contrastive_loss` must be one of {CONTRASTIVE_LOSSES}, got {self.contrastive_loss!r}.")
        if self.text_pooling not in (None, "cls", "mean"):
            raise ValueError(f"`text_pooling` must be None, 'cls' or 'mean', got {self.text_pooling!r}.")
        _require_probability("classifier_dropout", self.classifier_dropout)
        super().__post_init__(**kwargs)

    @property
    def resolved_text_pooling(self):
        """Pooling of the text tower: the explicit `text_pooling`, else the text config's `pooling`, else CLS."""
        return self.text_pooling or getattr(self.text_config, "pooling", "cls")

    @classmethod
    def from_vision_text_configs(cls, vision_config, text_config, **kwargs):
        return cls(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(), **kwargs)


def lucafound_config_for_size(model_size, vocab_size=None, **kwargs):
    """A `LuCaFoundConfig` for a named size: "base" (Swin3D-B + BERT-base), "small", or "tiny" (CPU smoke runs).

    The small sizes use windows that tile their token grids (8x16x16 and 16x32x32) exactly: the released (8, 7, 7)
    window would pad those grids and attend over 392 tokens, 5.5x (tiny) and 2x (small) slower per training step.
    """
    sizes = {
        "tiny": dict(
            vision=dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=[4, 4, 4],
                        image_size=[16, 64, 64]),
            text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                      max_position_embeddings=128),
            projection_dim=64,
        ),
        "small": dict(
            vision=dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=[4, 8, 8],
                        image_size=[32, 128, 128]),
            text=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                      max_position_embeddings=256),
            projection_dim=128,
        ),
        "base": dict(vision={}, text={}, projection_dim=512),
    }
    if model_size not in sizes:
        raise ValueError(f"`model_size` must be one of {sorted(sizes)}, got {model_size!r}.")
    size = sizes[model_size]
    text = dict(size["text"])
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    kwargs.setdefault("projection_dim", size["projection_dim"])
    return LuCaFoundConfig(vision_config=dict(size["vision"]), text_config=text, **kwargs)


LuCaFoundVisionConfig.register_for_auto_class()
LuCaFoundTextConfig.register_for_auto_class()
LuCaFoundConfig.register_for_auto_class()

__all__ = ["LuCaFoundVisionConfig", "LuCaFoundTextConfig", "LuCaFoundConfig", "lucafound_config_for_size"]
