"""The model's configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from scalelab.errors import ConfigError

DTYPES = ("bfloat16", "float32")


def choices() -> dict[str, Mapping[str, Any]]:
    """Each choice key and the registry whose names are its allowed values.

    The registries are the modules' own dicts, read live, so an entry added to one is a valid
    value at once. They are imported here, not at the top: their modules import this one.
    """
    from scalelab.model.attention_impls import ATTENTION_IMPLEMENTATIONS
    from scalelab.model.blocks import NORM_PLACEMENTS
    from scalelab.model.layers import ACTIVATIONS, NORMS
    from scalelab.model.masks import ATTENTION_PATTERNS
    from scalelab.model.mup import PARAMETRIZATIONS
    from scalelab.model.positions import POSITION_ENCODINGS
    from scalelab.model.stack import REMAT_POLICIES
    from scalelab.model.transformer import MODEL_FAMILIES

    return {
        "family": MODEL_FAMILIES,
        "activation": ACTIVATIONS,
        "norm": NORMS,
        "norm_position": NORM_PLACEMENTS,
        "position": POSITION_ENCODINGS,
        "attention": ATTENTION_PATTERNS,
        "attention_impl": ATTENTION_IMPLEMENTATIONS,
        "dtype": dict.fromkeys(DTYPES),
        "remat": REMAT_POLICIES,
        "parametrization": PARAMETRIZATIONS,
    }


@dataclasses.dataclass(frozen=True)
class SequenceLengths:
    """Tokens one training row puts through the model (the objective decides them).

    inputs: the encoder's (or the only stack's) positions. targets: the positions that get
    logits, which are the decoder's in an encoder-decoder model.
    """

    inputs: int
    targets: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a transformer; every field is a config key under `model.`."""

    family: str = "gpt"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: as many as n_heads; fewer gives grouped-query attention
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int | None = None  # None: ffn_multiplier * d_model
    ffn_multiplier: float = 4.0
    activation: str = "gelu"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    norm_position: str = "pre"  # pre: x + f(norm(x)); post: norm(x + f(x)), "Add & Norm" as in the original
    position: str = "rope"
    rope_theta: float = 10000.0
    relative_buckets: int = 32  # relative: T5 buckets per direction pair (half per direction when bidirectional)
    relative_max_distance: int = 128  # relative: offsets beyond this share the last bucket
    attention: str = "full"
    window: int = 128  # sliding/sparse: causal sees itself and the w-1 before; bidirectional sees +-w/2
    global_tokens: int = 1  # sparse: leading positions that see and are seen by every position
    attention_impl: str = "auto"  # auto: cudnn on a GPU, splash on a TPU, einsum elsewhere (model/attention_impls.py)
    max_seq_len: int = 1024  # learned positions: the table's length; generate: prompt + new tokens at most
    tie_embeddings: bool = True
    n_encoder_layers: int | None = None  # t5: None means n_layers
    n_decoder_layers: int | None = None  # t5: None means n_layers
    tie_encoder_decoder_embeddings: bool = True  # t5: one token table for encoder and decoder
    n_classes: int = 0  # bert: > 0 replaces the language-model head with a classifier on the first token
    use_bias: bool = False
    dropout: float = 0.0
    dtype: str = "bfloat16"
    remat: str = "none"
    scan_layers: bool = True
    unroll_max_layers: int | None = None  # scan: run this deep or shallower loop-free; None: CPU 16, GPU 32, else 4
    init_std: float = 0.02
    parametrization: str = "standard"  # mup: init, attention, readout and lr scale with width (model/mup.py)
    mup_base_width: int | None = None  # mup: the d_model the hyperparameters were tuned at (required with mup)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equals n_heads without grouped-query attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        """Width of one attention head."""
        return self.head_dim or self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the feed-forward layer."""
        return self.d_ff or int(self.ffn_multiplier * self.d_model)

    @property
    def encoder_layers(self) -> int:
        """Blocks in a t5 encoder."""
        return self.n_encoder_layers or self.n_layers

    @property
    def decoder_layers(self) -> int:
        """Blocks in a t5 decoder."""
        return self.n_decoder_layers or self.n_layers

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent field."""
        for key, allowed in choices().items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"model.{key}: unknown value {value!r}; choose one of {', '.join(allowed)}")
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        # null means "the default"; 0 used to mean it too, silently, and a negative size failed deep in JAX.
        for key in ("n_kv_heads", "head_dim", "d_ff"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"model.{key} must be positive, or null for the default, got {value}")
        for key in ("norm_eps", "init_std", "rope_theta", "ffn_multiplier"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model ({self.d_model}) is not divisible by model.n_heads ({self.n_heads}); "
                "change one of them or set model.head_dim"
            )
        if self.n_heads % self.kv_heads:
            divisors = ", ".join(str(d) for d in range(1, self.n_heads + 1) if self.n_heads % d == 0)
            raise ConfigError(
                f"model.n_heads ({self.n_heads}) is not divisible by model.n_kv_heads ({self.kv_heads}); "
                f"set model.n_kv_heads to one of {divisors} (null: one per query head)"
            )
        if self.position == "rope" and self.dim_per_head % 2:
            raise ConfigError(
                f"model.position=rope needs an even head dimension, got {self.dim_per_head}; set model.head_dim "
                "to an even number, or pick model.d_model and model.n_heads with an even quotient"
            )
        if self.position == "sinusoidal" and self.d_model % 2:  # sin and cos halves of the width
            raise ConfigError(
                f"model.position=sinusoidal needs an even model.d_model, got {self.d_model}; make model.d_model even"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.ffn_dim <= 0:
            raise ConfigError(f"model.d_ff must be positive, got {self.ffn_dim}")
        if self.unroll_max_layers is not None and self.unroll_max_layers < 0:
            raise ConfigError(
                f"model.unroll_max_layers must be 0 or more (0 always loops), or null, got {self.unroll_max_layers}"
            )
        self._validate_families()
        self._validate_attention()
        self._validate_parametrization()

    def _validate_families(self) -> None:
        for key in ("n_encoder_layers", "n_decoder_layers"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"model.{key} must be positive or null, got {value}")
            if value is not None and self.family != "t5":
                raise ConfigError(f"model.{key} applies to model.family=t5 only (family is {self.family})")
        if self.n_classes < 0:
            raise ConfigError(f"model.n_classes must be >= 0, got {self.n_classes}")
        if self.n_classes and self.family != "bert":
            raise ConfigError(f"model.n_classes (a classification head) needs model.family=bert, got {self.family}")

    def _validate_attention(self) -> None:
        if self.window < 1:
            raise ConfigError(f"model.window must be positive, got {self.window}")
        # Encoders see window/2 positions on each side, so the window must split evenly.
        if self.attention != "full" and self.family != "gpt" and self.window % 2:
            raise ConfigError(
                f"model.window ({self.window}) must be even for the bidirectional attention of {self.family}; "
                f"set model.window={self.window + 1}"
            )
        if self.global_tokens < (1 if self.attention == "sparse" else 0):
            raise ConfigError(
                f"model.global_tokens must be >= 1 with model.attention=sparse (>= 0 otherwise), got {self.global_tokens}"
            )
        if self.relative_buckets < 4 or self.relative_buckets % 2:
            raise ConfigError(f"model.relative_buckets must be an even number >= 4, got {self.relative_buckets}")
        if self.relative_max_distance <= self.relative_buckets // 2:
            raise ConfigError(
                f"model.relative_max_distance ({self.relative_max_distance}) must exceed half of "
                f"model.relative_buckets ({self.relative_buckets})"
            )

    def _validate_parametrization(self) -> None:
        if self.mup_base_width is not None and self.mup_base_width <= 0:
            raise ConfigError(f"model.mup_base_width must be positive, got {self.mup_base_width}")
        if self.parametrization != "mup":
            return  # a base width under standard is unused, so one config can compare the two
        if self.mup_base_width is None:
            raise ConfigError(
                "model.parametrization=mup needs model.mup_base_width, the d_model the hyperparameters "
                "were tuned at; set it, e.g. --set model.mup_base_width=64"
            )
        # A derived head_dim scales with d_model, so the base model has mup_base_width / n_heads per head.
        if self.head_dim is None and self.mup_base_width % self.n_heads:
            raise ConfigError(
                f"model.mup_base_width ({self.mup_base_width}) is not divisible by model.n_heads ({self.n_heads}), "
                "so the base model has no whole head_dim; choose a multiple of n_heads or set model.head_dim"
            )
