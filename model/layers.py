"""Transformer building blocks: parameters, norms, feed-forward and the inputs of attention.

Parameters are fp32 and carry logical axis names in their `axes` metadata. Matmuls take
inputs in the compute dtype and accumulate in fp32; softmax and norm statistics are fp32.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.model.axes import constrain
from scalelab.model.config import ModelConfig
from scalelab.model.masks import BIDIRECTIONAL, Pattern
from scalelab.model.mup import hidden_init_scale

_SHAPES_ONLY = contextvars.ContextVar("scalelab_shapes_only", default=False)


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Build parameters without drawing their random values, for models traced only for their shapes.

    Tracing the random draws of every parameter is most of the cost of describing a model
    abstractly (a sweep plan counts the parameters of dozens); the shapes, dtypes and axes are the same.
    """
    token = _SHAPES_ONLY.set(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], std: float | None) -> nnx.Param:
    """An fp32 parameter: normal(0, std) when std is given, else ones; named by `axes`."""
    if std is None or _SHAPES_ONLY.get():
        value = jnp.ones(shape, jnp.float32)
    else:
        value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value, axes=axes)


def zeros_param(shape: tuple[int, ...], axes: tuple[str, ...]) -> nnx.Param:
    """An fp32 parameter of zeros (biases), named by `axes`."""
    return nnx.Param(jnp.zeros(shape, jnp.float32), axes=axes)


def pack_residual(x: jax.Array) -> jax.Array:
    """A bf16 array saved for the backward pass, reinterpreted as uint16 (other dtypes unchanged).

    A layer scan stacks what each layer saves. XLA's CPU backend writes a layer's slice into
    a stacked bf16 buffer by converting the whole buffer (step time grows with depth
    squared); 16-bit integers are plain copies. The bitcast is free on every backend.
    """
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x


def unpack_residual(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The inverse of pack_residual for an array that was `dtype`."""
    return jax.lax.bitcast_convert_type(x, dtype) if x.dtype == jnp.uint16 else x


def matmul(spec: str, x: jax.Array, w: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """einsum with inputs cast to `dtype` and fp32 accumulation; the result is fp32.

    Below fp32, the backward matmuls also take `dtype` inputs (see `_low_precision_einsum`).
    A quantized weight (inference/quantize.py's QuantizedWeight) computes the product itself: it knows its
    grid, and whether to widen itself or to multiply integers. It is found by that method's name, since
    model/ imports nothing above it.
    """
    quantized = getattr(w, "quantized_matmul", None)
    if quantized is not None:
        return quantized(spec, x, jnp.dtype(dtype))
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
    return _low_precision_einsum(spec, jnp.dtype(dtype), x.dtype, w.dtype)(x, w)


@functools.cache
def _low_precision_einsum(spec: str, dtype: jnp.dtype, x_dtype: jnp.dtype, w_dtype: jnp.dtype) -> Callable:
    """f(x, w) = einsum(spec) in `dtype` with fp32 accumulation, whose gradients are matmuls in `dtype` too.

    Autodiff of the plain einsum multiplies the fp32 output gradient by a `dtype` operand,
    which XLA runs as an fp32 matmul (several times slower on bf16 hardware). Here the
    gradient is rounded to `dtype` first, as mixed-precision training does everywhere, and
    both gradient matmuls still accumulate in fp32.
    """
    inputs, out = spec.replace(" ", "").split("->")
    x_spec, w_spec = inputs.split(",")
    dx_spec, dw_spec = f"{out},{w_spec}->{x_spec}", f"{x_spec},{out}->{w_spec}"
    for name, own, others in (("x", x_spec, out + w_spec), ("w", w_spec, out + x_spec)):
        if set(own) - set(others) - {"."}:
            raise ValueError(f"matmul {spec!r}: an index of {name} appears nowhere else; sum it before the matmul")

    def forward(x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)

    def forward_with_residuals(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        # Keep w itself, not its cast: a layer's weights are then the scan's own input slice,
        # which JAX forwards instead of stacking a copy of every layer's weights for the backward.
        return forward(x, w), (pack_residual(x.astype(dtype)), w)

    def backward(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, w = residuals
        x, w, g = unpack_residual(x, dtype), w.astype(dtype), g.astype(dtype)
        dx = jnp.einsum(dx_spec, g, w, preferred_element_type=jnp.float32)
        if "." in w_spec:
            dw = jnp.einsum(dw_spec, x, g, preferred_element_type=jnp.float32)
        else:
            # Put the larger operand's free axes last, so it is the matmul's untransposed right-hand side.
            from_g = [c for c in w_spec if c in out]
            from_x = [c for c in w_spec if c not in out]
            order = from_g + from_x if x.size > g.size else from_x + from_g
            dw = jnp.einsum(f"{x_spec},{out}->{''.join(order)}", x, g, preferred_element_type=jnp.float32)
            dw = jnp.transpose(jax.lax.optimization_barrier(dw), [order.index(c) for c in w_spec])
        return dx.astype(x_dtype), dw.astype(w_dtype)

    f = jax.custom_vjp(forward)
    f.defvjp(forward_with_residuals, backward)
    return f


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when `key` is None (evaluation) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def recomputed(fn: Callable) -> Callable:
    """`fn` (of arrays only) whose backward pass recomputes it from its inputs, the only things it keeps.

    Autodiff would keep every fp32 intermediate of a norm or an activation. In a layer scan
    each becomes a per-layer stacked buffer, written in the forward and read back in the
    backward, which costs more than redoing a few elementwise operations. The kept inputs
    are packed (see pack_residual).
    """

    def forward_with_residuals(*args: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        return fn(*args), tuple(pack_residual(a) for a in args)

    def backward(saved: tuple[jax.Array, ...], g: jax.Array) -> tuple[jax.Array, ...]:
        args = tuple(unpack_residual(a, jnp.bfloat16) for a in saved)
        return jax.vjp(fn, *args)[1](g)

    f = jax.custom_vjp(fn)
    f.defvjp(forward_with_residuals, backward)
    return f


@functools.cache
def _rms_norm(eps: float) -> Callable:
    def norm(x: jax.Array, scale: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
        return (y * scale).astype(x.dtype)

    return recomputed(norm)


@functools.cache
def _layer_norm(eps: float) -> Callable:
    def norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + eps)
        return (y * scale + bias).astype(x.dtype)

    return recomputed(norm)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale; statistics in fp32."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (dim,), ("embed",), None)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _rms_norm(self.eps)(x, self.scale[...])


class LayerNorm(nnx.Module):
    """LayerNorm with learned scale and bias; statistics in fp32."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (dim,), ("embed",), None)
        self.bias = zeros_param((dim,), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return _layer_norm(self.eps)(x, self.scale[...], self.bias[...])


NORMS: dict[str, type[nnx.Module]] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


@dataclasses.dataclass(frozen=True)
class Activation:
    """A feed-forward nonlinearity; gated ones (GLU variants) use a second input projection."""

    fn: Callable[[jax.Array], jax.Array]
    gated: bool


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(jax.nn.relu, gated=False),
    "gelu": Activation(recomputed(lambda x: jax.nn.gelu(x)), gated=False),
    "swiglu": Activation(recomputed(lambda x: jax.nn.silu(x)), gated=True),
}


def make_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The norm layer named by `cfg.norm`, over d_model."""
    return NORMS[cfg.norm](cfg.d_model, cfg.norm_eps, rngs=rngs)


class FeedForward(nnx.Module):
    """Position-wise FFN: act(x W_in [+ b]) W_out [+ b], or the gated form act(x W_gate) * (x W_in)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.activation = ACTIVATIONS[cfg.activation]
        self.dtype = jnp.dtype(cfg.dtype)
        width = hidden_init_scale(cfg)  # 1.0 under standard; µP's fan-in factor relative to the base width
        std, out_std = cfg.init_std * width, cfg.init_std / math.sqrt(2 * cfg.n_layers) * width
        self.w_in = param(rngs, (cfg.d_model, cfg.ffn_dim), ("embed", "mlp"), std)
        self.w_gate = param(rngs, (cfg.d_model, cfg.ffn_dim), ("embed", "mlp"), std) if self.activation.gated else None
        self.w_out = param(rngs, (cfg.ffn_dim, cfg.d_model), ("mlp", "embed"), out_std)
        self.b_in = zeros_param((cfg.ffn_dim,), ("mlp",)) if cfg.use_bias else None
        self.b_out = zeros_param((cfg.d_model,), ("embed",)) if cfg.use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = matmul("btd,df->btf", x, self.w_in[...], self.dtype)
        if self.b_in is not None:
            h = h + self.b_in[...]
        if self.w_gate is not None:
            h = self.activation.fn(matmul("btd,df->btf", x, self.w_gate[...], self.dtype)) * h
        else:
            h = self.activation.fn(h)
        h = constrain(h.astype(self.dtype), ("batch", "length", "mlp"))
        y = matmul("btf,fd->btd", h, self.w_out[...], self.dtype)
        if self.b_out is not None:
            y = y + self.b_out[...]
        return y.astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """What every layer's attention needs besides x: computed once per forward pass.

    The arrays are laid out for the kernel of `pattern` (see model/attention.py); each has a
    leading batch axis (size 1 when shared), so a pipeline can split them into microbatches.
    mask: boolean, True where attention is allowed, or None.
    rotary: (cos, sin) tables of shape (batch, length, head_dim // 2) for RoPE, or None.
    bias: additive fp32 logits bias with a heads axis before the (query, key) axes, or None.
    pattern: which keys each query sees (static).
    slots: decoding only: the cache slot (batch, length) each new token's keys and values are written
      to. None in training, and for a decoder's cross-attention, whose cache is only read.
    """

    mask: Any = None
    rotary: tuple[jax.Array, jax.Array] | None = None
    bias: Any = None
    pattern: Pattern = BIDIRECTIONAL
    slots: jax.Array | None = None


jax.tree_util.register_dataclass(
    AttentionInputs, data_fields=["mask", "rotary", "bias", "slots"], meta_fields=["pattern"]
)
