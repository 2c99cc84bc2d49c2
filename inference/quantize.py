"""Post-training quantization: the modes, and weights that run their own matmul.

A quantized model is the same parameter tree with a `QuantizedWeight` in place of each weight that
train/qat.py's `is_quantized` picks (matmul weights, token table, untied head); norms, biases and
position tables stay fp32. The model's own `matmul` (model/layers.py) hands the product to the
weight, so the same modules run every mode, in training's forward, in eval and in the decoder's
layer scan (which slices the stacked values and scales one layer at a time, so only one layer is
ever widened). A weight-only mode widens its weight to the compute dtype right before the einsum.
An activation mode quantizes the activations too and multiplies integers: `dot_general` of int8
x int8 with an int32 result, rescaled by the activations' per-token (or calibrated) scale times
the weights' per-channel scale, so a CPU's int8 dot instructions (VNNI, AMX) can run it.

Grids (per output channel or per group of inputs) come from train/qat.py, so a model trained with
`train.qat_bits` runs exactly the weights it was trained on. int4 values are packed two per byte.
The modes live in one registry, MODES (inference/quant_modes.py), which `generate --quantize`
and `bench quant` list.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.errors import UserError
from scalelab.inference.quant_modes import MODES, QuantMode, check_backend
from scalelab.train.qat import STACK_AXES, grid, grouped_shape, input_axes, is_quantized

Params = dict[str, Any]
INT8_MAX = 127
FP8 = jnp.float8_e4m3fn
FP8_MAX = float(jnp.finfo(FP8).max)  # 448


def _pack_int4(values: jax.Array) -> jax.Array:
    """int8 values in [-7, 7] -> uint8 pairs along the last axis (low nibble first; an odd axis gets a zero pad)."""
    if values.shape[-1] % 2:
        values = jnp.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, 1)])
    pairs = values.astype(jnp.uint8).reshape(*values.shape[:-1], values.shape[-1] // 2, 2) & 0xF
    return pairs[..., 0] | (pairs[..., 1] << 4)


def _unpack_int4(packed: jax.Array, width: int) -> jax.Array:
    """The inverse of _pack_int4: sign-extended int8 values, `width` of them along the last axis."""
    nibbles = jnp.stack([packed & 0xF, packed >> 4], axis=-1).astype(jnp.int8)
    signed = jnp.where(nibbles > 7, nibbles - 16, nibbles).astype(jnp.int8)
    return signed.reshape(*packed.shape[:-1], packed.shape[-1] * 2)[..., :width]


def _to_output(arr: jax.Array, letters: str, out: str) -> jax.Array:
    """arr, whose axes are `letters`, transposed and broadcastable to an einsum output `out`."""
    kept = [c for c in out if c in letters]
    arr = jnp.transpose(arr, [letters.index(c) for c in kept])
    return arr.reshape([arr.shape[kept.index(c)] if c in kept else 1 for c in out])


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """A weight on its integer (or fp8) grid: values, scales in train/qat.py's grouped layout, and for
    calibrated activations one static activation scale per stacked layer."""

    values: jax.Array  # int8 (packed uint8 pairs for 4 bits, float8_e4m3fn for fp8), leading stack axes included
    scale: jax.Array  # fp32, grouped layout (see train/qat.py's grouped_shape), size 1 per group
    act_scale: jax.Array | None  # fp32 (*stack,): calibrated activation scale; None: dynamic per token
    mode: str  # a key of MODES
    axes: tuple[str, ...]  # logical axis names of the unsliced weight
    width: int  # the weight's last axis (int4 packs it two per byte)

    @property
    def spec(self) -> QuantMode:
        return MODES[self.mode]

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's own shape (after any slicing of its stack axes)."""
        return (*self.values.shape[:-1], self.width)

    @property
    def _axes(self) -> tuple[str, ...]:
        return self.axes[len(self.axes) - len(self.shape) :]

    def __getitem__(self, key: Any) -> QuantizedWeight:
        if key is not Ellipsis:
            raise TypeError("a quantized weight is read whole (w[...]); dequantize it to index it")
        return self

    def integers(self) -> jax.Array:
        """The values on the grid, unpacked (int8, or fp8), shaped like the weight."""
        return _unpack_int4(self.values, self.width) if self.spec.bits == 4 else self.values

    def astype(self, dtype: Any) -> jax.Array:
        """The dequantized weight in `dtype`."""
        shape = self.shape
        grouped = self.integers().astype(jnp.float32).reshape(grouped_shape(shape, self._axes, self.spec.group_size))
        return (grouped * self.scale).reshape(shape).astype(dtype)

    def quantized_matmul(self, spec: str, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
        """fp32 einsum(spec, x, this weight), computed as the mode says (see the module docstring)."""
        mode = self.spec
        if mode.activations == "none":
            return jnp.einsum(spec, x.astype(dtype), self.astype(dtype), preferred_element_type=jnp.float32)
        x_spec, w_spec, out = _parse(spec)
        contracted = tuple(i for i, c in enumerate(x_spec) if c not in out)
        xf = x.astype(jnp.float32)
        top = FP8_MAX if mode.float8 else INT8_MAX
        if self.act_scale is not None and mode.activations == "calibrated":
            x_scale = jnp.broadcast_to(self.act_scale, [1] * x.ndim)
        else:  # dynamic: one scale per token (per row of x's kept axes)
            amax = jnp.max(jnp.abs(xf), axis=contracted, keepdims=True)
            x_scale = jnp.where(amax > 0, amax / top, 1.0)
        if mode.float8:
            xq = jnp.clip(xf / x_scale, -top, top).astype(FP8)
            product = jnp.einsum(spec, xq, self.values, preferred_element_type=jnp.float32)
        else:
            xq = jnp.clip(jnp.round(xf / x_scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
            product = jnp.einsum(spec, xq, self.values, preferred_element_type=jnp.int32).astype(jnp.float32)
        x_kept = "".join(c for c in x_spec if c in out)
        x_scale = _to_output(jnp.squeeze(x_scale, contracted), x_kept, out)
        w_axes = input_axes(self._axes)
        w_scale = self.scale.reshape([1 if i in w_axes else n for i, n in enumerate(self.shape)])
        w_kept = "".join(c for c in w_spec if c in out)
        w_scale = _to_output(jnp.squeeze(w_scale, w_axes), w_kept, out)
        return product * x_scale * w_scale


jax.tree_util.register_dataclass(
    QuantizedWeight, data_fields=["values", "scale", "act_scale"], meta_fields=["mode", "axes", "width"]
)


def _parse(spec: str) -> tuple[str, str, str]:
    inputs, out = spec.replace(" ", "").split("->")
    x_spec, w_spec = inputs.split(",")
    if "." in spec:
        raise ValueError(f"a quantized weight's matmul needs explicit axes, got {spec!r}")
    return x_spec, w_spec, out


def quantize_weight(w: jax.Array, axes: tuple[str, ...], mode: QuantMode, act_scale: jax.Array | None = None):
    """One weight on `mode`'s grid."""
    axes = tuple(axes)
    if mode.float8:  # one scale per output channel, fp8's range filled: max|w| maps to 448
        grouped = jnp.asarray(w, jnp.float32).reshape(grouped_shape(w.shape, axes, 0))
        amax = jnp.max(jnp.abs(grouped), axis=input_axes(axes)[0] + 1, keepdims=True)
        scale = jnp.where(amax > 0, amax / FP8_MAX, 1.0)
        values = (grouped / scale).astype(FP8).reshape(w.shape)
    else:
        values, scale = grid(w, axes, mode.bits, mode.group_size)
        if mode.bits == 4:
            values = _pack_int4(values)
    return QuantizedWeight(values, scale, act_scale, mode.name, axes, w.shape[-1])


def quantize(params: Params, axes: Params, mode: str | QuantMode = "int8", act_scales: Params | None = None) -> Params:
    """params with each weight `is_quantized` picks on `mode`'s grid (a QuantizedWeight); the rest as they are.

    `act_scales` (from inference/calibrate.py) gives calibrated modes their activation scales.
    """
    mode = MODES[mode] if isinstance(mode, str) else mode
    check_backend(mode)
    if mode.activations == "calibrated" and act_scales is None:
        raise UserError(f"--quantize {mode.name} needs activation scales: calibrate on a few batches first")
    flat_axes = _flat(axes)

    def one(path: tuple, w: jax.Array) -> Any:
        a = tuple(flat_axes[path])
        if not is_quantized(a):
            return w
        scale = None if act_scales is None else act_scales.get(jax.tree_util.keystr(path))
        return quantize_weight(w, a, mode, scale)

    return jax.tree_util.tree_map_with_path(one, params)


def dequantize(params: Params) -> Params:
    """fp32 weights wherever `params` holds a QuantizedWeight; everything else as it is."""
    return jax.tree.map(
        lambda p: p.astype(jnp.float32) if isinstance(p, QuantizedWeight) else p, params, is_leaf=is_quantized_leaf
    )


def is_quantized_leaf(x: Any) -> bool:
    return isinstance(x, QuantizedWeight)


def check_params(params: Params, shapes: Params, family: str) -> None:
    """UserError unless `params` has exactly the paths and shapes of a `family` model described by `shapes`."""
    have = {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in _leaves(params)}
    want = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in _leaves(shapes)}
    for path in sorted(set(have) | set(want)):
        if have.get(path) != want.get(path):
            raise UserError(
                f"these parameters are not a model.family={family} model of this config (parameter {path}: "
                f"{have.get(path, 'missing')} here, {want.get(path, 'absent')} in the model); quantize a checkpoint "
                "with the config it was trained with"
            )


def _leaves(tree: Any) -> list[tuple[Any, Any]]:
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_quantized_leaf)[0]


def _flat(tree: Any) -> dict[tuple, Any]:
    return dict(
        jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
    )


def nbytes(tree: Any) -> int:
    """Bytes of every array in `tree`, quantized weights as stored (packed values and scales)."""
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class QuantizationReport:
    """Parameter bytes before and after quantization, for the quantized weights and for the whole model."""

    mode: str
    quantized_before: int
    quantized_after: int  # values plus scales
    total_before: int
    total_after: int

    @property
    def saved(self) -> int:
        """Bytes saved."""
        return self.total_before - self.total_after

    @property
    def ratio(self) -> float:
        """The whole model's bytes against the same model in fp32."""
        return self.total_after / self.total_before

    def describe(self) -> str:
        """One line for people."""
        return (
            f"{self.mode} weights: quantized weights {_mib(self.quantized_before)} -> {_mib(self.quantized_after)}, "
            f"all parameters {_mib(self.total_before)} -> {_mib(self.total_after)} ({self.ratio:.3f}x of fp32), "
            f"{_mib(self.saved)} saved"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def report(params: Params, quantized: Params) -> QuantizationReport:
    """Bytes of fp32 `params` against their `quantized` tree."""
    pairs = list(zip(_leaves(params), _leaves(quantized), strict=True))
    chosen = [(p, q) for (_, p), (_, q) in pairs if isinstance(q, QuantizedWeight)]
    modes = {q.mode for _, q in chosen}
    before = sum(math.prod(np.shape(p)) * 4 for (_, p), _ in pairs)
    return QuantizationReport(
        mode="/".join(sorted(modes)) or "none",
        quantized_before=sum(math.prod(np.shape(p)) * 4 for p, _ in chosen),
        quantized_after=nbytes([q for _, q in chosen]),
        total_before=before,
        total_after=nbytes(quantized),
    )


__all__ = ["STACK_AXES", "QuantizedWeight", "dequantize", "input_axes", "quantize", "report"]
