"""Symmetric integer grids for weights, and quantization-aware training on them.

One grid serves training and inference: a weight's contracted (input) axes are cut into
groups of `group_size` inputs (all of them when 0: one scale per output channel), and each
group gets the scale s = max|w| / qmax with qmax = 2^(bits-1) - 1, so w ~= round(w / s) * s and
rounding errs by at most s/2. inference/quantize.py stores these grids; with `train.qat_bits`
set, the loss sees every quantized weight as `w + stop_gradient(fake_quant(w) - w)`: the
forward pass runs the weights inference will run, and the gradient passes straight through
the rounding to the fp32 weights (the straight-through estimator).

Which weights: every matmul weight (model/counting.py's `is_matmul_weight`) and the token
table and untied output head (they hold most of a small model's bytes). Norms, biases and
position tables stay fp32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from scalelab.model.config import ConfigError
from scalelab.model.counting import is_matmul_weight

STACK_AXES = ("layers", "stage")


def is_quantized(axes: tuple[str, ...]) -> bool:
    """True for the weights a quantized model stores on an integer grid: matmul weights, token table, head."""
    named = tuple(a for a in axes if a not in STACK_AXES)
    return is_matmul_weight(axes) or set(named) == {"vocab", "embed"}


def input_axes(axes: tuple[str, ...]) -> tuple[int, ...]:
    """Indices of a weight's contracted (input) axes, from its logical axis names; they are always contiguous.

    The token table and the head contract d_model (`embed`) into logits; any other weight that starts
    with `embed` maps d_model to its other axes (q, k, v, the FFN's input projections); the rest map
    their axes to `embed` (the attention output and the FFN's output projection).
    """
    named = [i for i, a in enumerate(axes) if a not in STACK_AXES]
    if "vocab" in axes or axes[named[0]] == "embed":
        return tuple(i for i in named if axes[i] == "embed")
    return tuple(i for i in named if axes[i] != "embed")


def grouped_shape(shape: tuple[int, ...], axes: tuple[str, ...], group_size: int) -> tuple[int, ...]:
    """`shape` with its input axes merged and cut into (groups, group_size); ConfigError if they do not divide."""
    inputs = input_axes(axes)
    first, last = inputs[0], inputs[-1] + 1
    fan_in = math.prod(shape[first:last])
    size = group_size or fan_in
    if fan_in % size:
        raise ConfigError(
            f"a weight with {fan_in} inputs (axes {axes}) does not split into groups of {size}; "
            f"choose a group size that divides {fan_in}"
        )
    return (*shape[:first], fan_in // size, size, *shape[last:])


def grid(w: jax.Array, axes: tuple[str, ...], bits: int, group_size: int) -> tuple[jax.Array, jax.Array]:
    """(int8 values in [-qmax, qmax] shaped like `w`, fp32 scales in the grouped layout with size 1 per group)."""
    qmax = 2 ** (bits - 1) - 1
    grouped = jnp.asarray(w, jnp.float32).reshape(grouped_shape(w.shape, axes, group_size))
    group_axis = input_axes(axes)[0] + 1
    amax = jnp.max(jnp.abs(grouped), axis=group_axis, keepdims=True)
    scale = jnp.where(amax > 0, amax / qmax, 1.0)
    values = jnp.clip(jnp.round(grouped / scale), -qmax, qmax).astype(jnp.int8)
    return values.reshape(w.shape), scale


def fake_quant(w: jax.Array, axes: tuple[str, ...], bits: int, group_size: int) -> jax.Array:
    """w rounded to its grid, in w's dtype and shape, with the straight-through gradient (identity)."""
    values, scale = grid(jax.lax.stop_gradient(w), axes, bits, group_size)
    grouped = values.reshape(grouped_shape(w.shape, axes, group_size)).astype(jnp.float32) * scale
    rounded = grouped.reshape(w.shape).astype(w.dtype)
    return w + jax.lax.stop_gradient(rounded - w)


def fake_quantized(params: Any, axes: Any, bits: int, group_size: int) -> Any:
    """params with every quantized weight fake-quantized (see `fake_quant`); the rest as they are."""
    if not bits:
        return params
    return jax.tree.map(
        lambda w, a: fake_quant(w, tuple(a), bits, group_size) if is_quantized(tuple(a)) else w,
        params,
        axes,
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )
