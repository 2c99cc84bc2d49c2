"""Exact parameter and training-FLOP counts, shared by the summary, MFU, sweeps and fits."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax

from model.config import ModelConfig
from model.functional import describe

EMBEDDING_AXES = ("vocab", "positions")


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model.

    total: every parameter. non_embedding: all but token and position embedding tables and
    the untied output head (Kaplan's N). matmul: weights multiplied once per token in the
    forward pass, including the logits projection.
    """

    total: int
    non_embedding: int
    matmul: int


def parameter_axes(cfg: ModelConfig) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    """(shape, logical axes) of every parameter, from an abstract model (no memory used)."""
    spec = describe(cfg)
    return [(s.shape, tuple(a)) for s, a in zip(jax.tree.leaves(spec.shapes), jax.tree.leaves(spec.axes), strict=True)]


def is_matmul_weight(axes: tuple[str, ...]) -> bool:
    """True for weights multiplied by activations: they span `embed` and another non-embedding axis."""
    named = [a for a in axes if a != "layers"]
    return "embed" in named and len(named) >= 2 and not set(named) & set(EMBEDDING_AXES)


@functools.lru_cache(maxsize=256)
def count_params(cfg: ModelConfig) -> ParamCounts:
    """Exact parameter counts of the model `cfg` describes."""
    params = parameter_axes(cfg)
    total = sum(math.prod(shape) for shape, _ in params)
    embedding = sum(math.prod(shape) for shape, axes in params if set(axes) & set(EMBEDDING_AXES))
    matmul = sum(math.prod(shape) for shape, axes in params if is_matmul_weight(axes))
    return ParamCounts(total=total, non_embedding=total - embedding, matmul=matmul + cfg.vocab_size * cfg.d_model)


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs per token of QK^T and AV over every computed key position."""
    return 2 * 2 * cfg.n_layers * seq_len * cfg.n_heads * cfg.dim_per_head


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token: 6 per matmul weight plus 3x the forward attention term."""
    return 6 * count_params(cfg).matmul + 3 * attention_flops_per_token(cfg, seq_len)
