"""Exact parameter and training-FLOP counts, shared by the summary, MFU, sweeps and fits.

Training costs 3x the forward pass (the backward pass costs twice the forward). The forward
pass costs 2 FLOPs per multiply-add: every matmul weight times the tokens that pass through
it, the logits projection, and QK^T and AV over the query-key pairs the attention kernel
actually computes (for sliding and sparse attention only the blocks it scores, including
the masked pairs inside them).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax

from scalelab.model.config import ModelConfig, SequenceLengths
from scalelab.model.functional import describe
from scalelab.model.masks import make_pattern

EMBEDDING_AXES = ("vocab", "positions", "relative_buckets")  # token and position tables
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model.

    total: every parameter. non_embedding: all but the token and position tables (absolute
    and relative) and the untied output head (Kaplan's N). matmul: every weight multiplied by
    activations, plus the vocab x d_model logits projection when the model has one.
    """

    total: int
    non_embedding: int
    matmul: int


@functools.lru_cache(maxsize=256)
def parameters(cfg: ModelConfig) -> tuple[tuple[Path, tuple[int, ...], tuple[str, ...]], ...]:
    """(path, shape, logical axes) of every parameter, from an abstract model (no memory used)."""
    spec = describe(cfg)
    shapes = jax.tree_util.tree_flatten_with_path(spec.shapes)[0]
    axes = jax.tree.leaves(spec.axes)
    return tuple(
        (tuple(str(k.key) for k in path), s.shape, tuple(a)) for (path, s), a in zip(shapes, axes, strict=True)
    )


def is_matmul_weight(axes: tuple[str, ...]) -> bool:
    """True for weights multiplied by activations: they span `embed` and another non-embedding axis."""
    named = [a for a in axes if a != "layers"]
    return "embed" in named and len(named) >= 2 and not set(named) & set(EMBEDDING_AXES)


@functools.lru_cache(maxsize=256)
def count_params(cfg: ModelConfig) -> ParamCounts:
    """Exact parameter counts of the model `cfg` describes."""
    params = parameters(cfg)
    total = sum(math.prod(shape) for _, shape, _ in params)
    embedding = sum(math.prod(shape) for _, shape, axes in params if set(axes) & set(EMBEDDING_AXES))
    matmul = sum(math.prod(shape) for _, shape, axes in params if is_matmul_weight(axes))
    logits = 0 if cfg.n_classes else cfg.vocab_size * cfg.d_model
    return ParamCounts(total=total, non_embedding=total - embedding, matmul=matmul + logits)


@dataclasses.dataclass(frozen=True)
class ForwardUsage:
    """How one forward pass over a row uses the model."""

    weight_tokens: Callable[[Path], int]  # tokens multiplied by the matmul weight at a parameter path
    logits_rows: int  # positions projected onto the vocabulary
    attention_scores: int  # query-key pairs computed per head, summed over every attention layer


def _decoder_usage(cfg: ModelConfig, lengths: SequenceLengths) -> ForwardUsage:
    n = lengths.inputs
    return ForwardUsage(lambda path: n, n, cfg.n_layers * make_pattern(cfg, causal=True).scores(n, n))


def _encoder_usage(cfg: ModelConfig, lengths: SequenceLengths) -> ForwardUsage:
    n = lengths.inputs
    scores = cfg.n_layers * make_pattern(cfg, causal=False).scores(n, n)
    # A classifier reads the first position only and replaces the vocabulary logits.
    return ForwardUsage(lambda path: 1 if path[0] == "classifier" else n, 0 if cfg.n_classes else n, scores)


def _encoder_decoder_usage(cfg: ModelConfig, lengths: SequenceLengths) -> ForwardUsage:
    n_in, n_out = lengths.inputs, lengths.targets

    def weight_tokens(path: Path) -> int:
        # Cross-attention keys and values are projections of the encoder output.
        reads_encoder = path[0] == "encoder" or path[-2:] in (("cross_attn", "wk"), ("cross_attn", "wv"))
        return n_in if reads_encoder else n_out

    encoder = cfg.encoder_layers * make_pattern(cfg, causal=False).scores(n_in, n_in)
    decoder = cfg.decoder_layers * (make_pattern(cfg, causal=True).scores(n_out, n_out) + n_out * n_in)
    return ForwardUsage(weight_tokens, n_out, encoder + decoder)


FORWARD_USAGE: dict[str, Callable[[ModelConfig, SequenceLengths], ForwardUsage]] = {
    "gpt": _decoder_usage,
    "bert": _encoder_usage,
    "t5": _encoder_decoder_usage,
}


def flops_per_sequence(cfg: ModelConfig, lengths: SequenceLengths) -> int:
    """Training FLOPs of one row: 3 x (2 per matmul multiply-add + QK^T and AV over computed pairs)."""
    usage = FORWARD_USAGE[cfg.family](cfg, lengths)
    weights = sum(
        math.prod(shape) * usage.weight_tokens(path) for path, shape, axes in parameters(cfg) if is_matmul_weight(axes)
    )
    matmul = weights + cfg.vocab_size * cfg.d_model * usage.logits_rows
    attention = 2 * 2 * cfg.n_heads * cfg.dim_per_head * usage.attention_scores
    return 3 * (2 * matmul + attention)


def flops_per_token(cfg: ModelConfig, seq_len: int, lengths: SequenceLengths | None = None) -> int | float:
    """Training FLOPs per token of a `seq_len`-token row that puts `lengths` through the model.

    `lengths` defaults to seq_len everywhere. The result is an int whenever the row's FLOPs
    divide evenly by seq_len, which they always do for gpt and bert.
    """
    total = flops_per_sequence(cfg, lengths or SequenceLengths(seq_len, seq_len))
    return total // seq_len if total % seq_len == 0 else total / seq_len
