"""int8 weight-only quantization: per-output-channel symmetric int8 for the matmul weights.

Each matmul weight (model/counting.py's `is_matmul_weight`) becomes int8 values q and fp32
scales s with w ~= q * s, where s = max|w| / 127 over the weight's input (contracted) axes, so
every output channel gets its own scale and rounding errs by at most s/2 per element. Which
axes are inputs follows from the logical names: a weight that starts with `embed` maps d_model
to its other axes (q, k, v, the FFN's input projections); any other maps its axes to `embed`
(the attention output and the FFN's output projection). Stacking axes (`layers`, `stage`)
keep their own scales. Embeddings, norms and biases stay fp32.

Quantized parameters are the same tree with int8 leaves, plus a `scales` tree (None for
every leaf left alone); `dequantize` undoes it, and the decoder calls it per layer inside its
scan, right before the matmuls.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.model.counting import is_matmul_weight

Params = dict[str, Any]
STACK_AXES = ("layers", "stage")
INT8_MAX = 127


def input_axes(axes: tuple[str, ...]) -> tuple[int, ...]:
    """Indices of a matmul weight's contracted (input) axes, from its logical axis names."""
    named = [i for i, a in enumerate(axes) if a not in STACK_AXES]
    if axes[named[0]] == "embed":
        return (named[0],)
    return tuple(i for i in named if axes[i] != "embed")


def quantize_weight(w: jax.Array, axes: tuple[str, ...]) -> tuple[jax.Array, jax.Array]:
    """(int8 values, fp32 scales) of one weight; scales keep every axis, with size 1 on the input axes."""
    reduce = input_axes(tuple(axes))
    w = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=reduce, keepdims=True)
    scale = jnp.where(amax > 0, amax / INT8_MAX, 1.0)
    values = jnp.clip(jnp.round(w / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return values, scale


def quantize(params: Params, axes: Params) -> tuple[Params, Params]:
    """(params with int8 matmul weights, scales tree with None elsewhere) for params and their logical axes."""
    chosen = jax.tree.map(lambda a: is_matmul_weight(tuple(a)), axes, is_leaf=_is_spec)
    pairs = jax.tree.map(
        lambda w, a, q: quantize_weight(w, tuple(a)) if q else (w, None), params, axes, chosen, is_leaf=_is_spec
    )
    values = jax.tree.map(lambda p: p[0], pairs, is_leaf=_is_pair)
    scales = jax.tree.map(lambda p: p[1], pairs, is_leaf=_is_pair)
    return values, scales


def dequantize(params: Params, scales: Params | None) -> Params:
    """fp32 weights q * s wherever `scales` has a leaf; everything else as it is."""
    if scales is None:
        return params
    return jax.tree.map(
        lambda p, s: p if s is None else p.astype(jnp.float32) * s, params, scales, is_leaf=lambda x: x is None
    )


@dataclasses.dataclass(frozen=True)
class QuantizationReport:
    """Parameter bytes before and after quantization, for the matmul weights and for the whole model."""

    matmul_before: int
    matmul_after: int  # int8 values plus fp32 scales
    total_before: int
    total_after: int

    @property
    def saved(self) -> int:
        """Bytes saved."""
        return self.total_before - self.total_after

    def describe(self) -> str:
        """One line for people."""
        return (
            f"int8 weights: matmul weights {_mib(self.matmul_before)} -> {_mib(self.matmul_after)} "
            f"({self.matmul_after / self.matmul_before:.3f}x), all parameters {_mib(self.total_before)} -> "
            f"{_mib(self.total_after)}, {_mib(self.saved)} saved"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _bytes(tree: Any) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def report(params: Params, values: Params, scales: Params) -> QuantizationReport:
    """Bytes of `params` against their quantized `values` and `scales`."""
    chosen = jax.tree.leaves(jax.tree.map(lambda s: s is not None, scales, is_leaf=lambda x: x is None))

    def pick(tree: Params, quantized: bool) -> list[jax.Array]:
        return [x for x, c in zip(jax.tree.leaves(tree), chosen, strict=True) if c == quantized]

    matmul_after = _bytes(pick(values, True)) + _bytes(scales)
    return QuantizationReport(
        matmul_before=_bytes(pick(params, True)),
        matmul_after=matmul_after,
        total_before=_bytes(params),
        total_after=matmul_after + _bytes(pick(values, False)),
    )


def _is_spec(x: Any) -> bool:
    return isinstance(x, jax.sharding.PartitionSpec)


def _is_pair(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and not _is_spec(x)
