"""Parametrizations chosen by `model.parametrization`: how initialization, attention, the readout and
AdamW's learning rates scale with width.

`standard` is the model as written: every init std and learning rate is the same at every width.
`mup` is the maximal update parametrization for Adam (Yang et al., Tensor Programs V, Table 3),
written relative to a base width B (`model.mup_base_width`, the d_model where the
hyperparameters were tuned). With width multiplier m = d_model / B:

- hidden matrices (both dimensions grow with width: attention and FFN weights) start at std
  init_std / sqrt(m) and learn at lr / m;
- attention logits are q.k / d_head instead of q.k / sqrt(d_head), written as
  q.k * sqrt(d_head at B) / d_head, so they equal the standard model's at the base width;
- the readout (logits projection, tied or not, and a classifier) is multiplied by 1/m, with its
  init std and learning rate unchanged; this is Table 3's readout (init variance 1/fan_in^2,
  lr 1/fan_in) in its multiplier form, the one that also holds for a head tied to the embeddings;
- embeddings, position tables, norms and biases keep init_std and the base lr.

At d_model == B every factor is exactly 1, so the model, its initial parameters and its optimizer
are the standard ones, bit for bit; hyperparameters tuned there transfer to other widths.
Standard is the same rules with m = 1 at every width.
"""

from __future__ import annotations

import math
from typing import Any

import jax

from scalelab.model.config import ModelConfig

PARAMETRIZATIONS: dict[str, str] = {
    "standard": "the same init std and learning rate at every width",
    "mup": "maximal update parametrization relative to model.mup_base_width",
}
# Readout axes besides the vocabulary (which counting.py already treats as an embedding axis):
# a weight that ends in one of them maps width onto a fixed size and is not a hidden matrix.
READOUT_AXES = ("classes",)


def width_multiplier(cfg: ModelConfig) -> float:
    """m = d_model / model.mup_base_width under mup; 1.0 under standard."""
    if cfg.parametrization != "mup":
        return 1.0
    return cfg.d_model / cfg.mup_base_width


def hidden_init_scale(cfg: ModelConfig) -> float:
    """The factor on the init std of hidden matrices: 1 / sqrt(m) (fan-in scaling relative to the base)."""
    return 1.0 / math.sqrt(width_multiplier(cfg))


def readout_multiplier(cfg: ModelConfig) -> float:
    """The factor on the readout's output (the logits): 1 / m."""
    return 1.0 / width_multiplier(cfg)


def hidden_lr_scale(cfg: ModelConfig) -> float:
    """The factor on AdamW's learning rate (and so its decoupled decay) for hidden matrices: 1 / m."""
    return 1.0 / width_multiplier(cfg)


def base_head_dim(cfg: ModelConfig) -> float:
    """The head width of the base model: a set model.head_dim stays fixed across widths (heads are added);
    a derived one is d_model / n_heads, so at the base it is mup_base_width / n_heads."""
    if cfg.parametrization != "mup" or cfg.head_dim is not None:
        return cfg.dim_per_head
    return cfg.mup_base_width / cfg.n_heads


def attention_logit_scale(cfg: ModelConfig) -> float | None:
    """The factor on q.k in every attention kernel, or None for the kernels' own 1/sqrt(d_head).

    mup: sqrt(base head width) / d_head. It is returned as None whenever it equals 1/sqrt(d_head)
    exactly (standard, the base width, a fixed head_dim), so those models run today's kernels.
    """
    ratio = cfg.dim_per_head / base_head_dim(cfg)
    if ratio == 1.0:
        return None
    # sqrt(d) * sqrt(d / d_base) = d / sqrt(d_base): 1/sqrt(d) at the base, 1/d-like beyond it.
    return 1.0 / (math.sqrt(cfg.dim_per_head) * math.sqrt(ratio))


def is_hidden_weight(axes: tuple[str, ...]) -> bool:
    """True for hidden matrices: matmul weights whose every axis grows with width (no vocab or class axis)."""
    # Imported here: counting builds models, and the model's modules import this one.
    from scalelab.model.counting import is_matmul_weight

    return is_matmul_weight(tuple(axes)) and not set(axes) & set(READOUT_AXES)


def lr_scales(cfg: ModelConfig, axes: Any) -> Any:
    """A tree like `axes` (logical axis names per parameter) of each parameter's learning-rate factor."""
    hidden = hidden_lr_scale(cfg)
    return jax.tree.map(lambda spec: hidden if is_hidden_weight(tuple(spec)) else 1.0, axes)
