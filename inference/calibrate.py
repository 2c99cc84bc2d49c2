"""Calibration for static activation scales: run the fp model on a few batches and record what each matmul sees.

Each weight that will be quantized is wrapped in an `Observed` weight for the calibration pass.
Like a QuantizedWeight it runs its own matmul (model/layers.py hands it the product): the plain
einsum, plus a host callback with max|x| of its input and its stacked layer's index (the layer
scan slices `index` like the weight, so each layer reports its own). The largest value over all
batches, / 127, is that matmul's static int8 activation scale (`w8a8-calibrated`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.errors import UserError
from scalelab.inference.quantize import INT8_MAX
from scalelab.train.qat import STACK_AXES, is_quantized

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Observed:
    """A weight in a calibration pass: it multiplies as usual and reports max|input| per stacked layer."""

    w: jax.Array
    index: jax.Array  # int32 (*stack,): which stacked layer this is, flattened
    path: str  # the parameter's path (jax.tree_util.keystr), where its record goes

    def __getitem__(self, key: Any) -> Observed:
        return self

    def astype(self, dtype: Any) -> jax.Array:
        return self.w.astype(dtype)

    def quantized_matmul(self, spec: str, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
        amax = jnp.max(jnp.abs(x.astype(jnp.float32)))
        jax.debug.callback(functools.partial(_RECORDER.record, self.path), self.index, amax)
        return jnp.einsum(spec, x.astype(dtype), self.w.astype(dtype), preferred_element_type=jnp.float32)


jax.tree_util.register_dataclass(Observed, data_fields=["w", "index"], meta_fields=["path"])


class _Recorder:
    """Largest |activation| seen per (parameter path, stacked layer) during a calibration pass."""

    def __init__(self) -> None:
        self.amax: dict[str, dict[int, float]] = {}

    def record(self, path: str, index: np.ndarray, amax: np.ndarray) -> None:
        held = self.amax.setdefault(path, {})
        key = int(np.asarray(index).reshape(-1)[0])
        held[key] = max(held.get(key, 0.0), float(amax))


_RECORDER = _Recorder()


def observed(params: Params, axes: Params) -> Params:
    """params with every weight to be quantized wrapped in an Observed weight."""
    flat_axes = dict(jax.tree_util.tree_flatten_with_path(axes, is_leaf=_is_spec)[0])

    def wrap(path: tuple, w: jax.Array) -> Any:
        a = tuple(flat_axes[path])
        if not is_quantized(a):
            return w
        stack = tuple(n for n, name in zip(w.shape, a, strict=True) if name in STACK_AXES)
        index = jnp.arange(math.prod(stack), dtype=jnp.int32).reshape(stack)
        return Observed(w, index, jax.tree_util.keystr(path))

    return jax.tree_util.tree_map_with_path(wrap, params)


def calibrate(model: Any, params: Params, batches: Iterable[dict[str, Any]]) -> dict[str, jax.Array]:
    """Static activation scales, {parameter path: fp32 (*stack,)}, from the fp model `params` (a
    model.functional.ModelDef's) on `batches`; UserError if there are none."""
    batches = list(batches)
    if not batches:
        raise UserError("the calibration set is empty; give at least one batch (e.g. --calibration-batches 4)")
    wrapped = observed(params, model.axes)
    _RECORDER.amax = {}
    forward = jax.jit(lambda p, b: model.apply(p, b))
    for batch in batches:
        jax.block_until_ready(forward(wrapped, batch))
    jax.effects_barrier()
    stacks = {
        leaf.path: leaf.index.shape
        for leaf in jax.tree.leaves(wrapped, is_leaf=lambda x: isinstance(x, Observed))
        if isinstance(leaf, Observed)
    }
    scales = {}
    for path, per_layer in _RECORDER.amax.items():
        flat = np.array([per_layer.get(i, 0.0) for i in range(math.prod(stacks[path]))], np.float32)
        scales[path] = jnp.asarray(np.where(flat > 0, flat / INT8_MAX, 1.0).reshape(stacks[path]))
    return scales


def _is_spec(x: Any) -> bool:
    return isinstance(x, jax.sharding.PartitionSpec)
