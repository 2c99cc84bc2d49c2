"""Transformer building blocks: norms, feed-forward, attention and the residual block.

Parameters are fp32 and carry logical axis names in their `axes` metadata. Matmuls take
inputs in the compute dtype and accumulate in fp32; softmax and norm statistics are fp32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from model.axes import constrain
from model.config import ModelConfig


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], std: float | None) -> nnx.Param:
    """An fp32 parameter: normal(0, std) when std is given, else ones; named by `axes`."""
    if std is None:
        value = jnp.ones(shape, jnp.float32)
    else:
        value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value, axes=axes)


def zeros_param(shape: tuple[int, ...], axes: tuple[str, ...]) -> nnx.Param:
    """An fp32 parameter of zeros (biases), named by `axes`."""
    return nnx.Param(jnp.zeros(shape, jnp.float32), axes=axes)


def matmul(spec: str, x: jax.Array, w: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """einsum with inputs cast to `dtype` and fp32 accumulation; the result is fp32."""
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when `key` is None (evaluation) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale; statistics in fp32."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (dim,), ("embed",), None)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with learned scale and bias; statistics in fp32."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (dim,), ("embed",), None)
        self.bias = zeros_param((dim,), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


NORMS: dict[str, type[nnx.Module]] = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


@dataclasses.dataclass(frozen=True)
class Activation:
    """A feed-forward nonlinearity; gated ones (GLU variants) use a second input projection."""

    fn: Callable[[jax.Array], jax.Array]
    gated: bool


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(jax.nn.relu, gated=False),
    "gelu": Activation(jax.nn.gelu, gated=False),
    "swiglu": Activation(jax.nn.silu, gated=True),
}


def make_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The norm layer named by `cfg.norm`, over d_model."""
    return NORMS[cfg.norm](cfg.d_model, cfg.norm_eps, rngs=rngs)


class FeedForward(nnx.Module):
    """Position-wise FFN: act(x W_in [+ b]) W_out [+ b], or the gated form act(x W_gate) * (x W_in)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.activation = ACTIVATIONS[cfg.activation]
        self.dtype = jnp.dtype(cfg.dtype)
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
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

    mask: boolean, broadcastable to (batch, 1, 1, q_len, kv_len); True where attention is allowed.
    rotary: (cos, sin) tables of shape (batch, length, head_dim // 2) for RoPE, or None.
    bias: additive logits bias broadcastable to (batch, kv_heads, groups, q_len, kv_len), or None.
    """

    mask: jax.Array | None = None
    rotary: tuple[jax.Array, jax.Array] | None = None
    bias: jax.Array | None = None


jax.tree_util.register_dataclass(AttentionInputs, data_fields=["mask", "rotary", "bias"], meta_fields=[])


def apply_rotary(x: jax.Array, rotary: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotate pairs (first half, second half) of the head dimension by position-dependent angles."""
    cos, sin = rotary
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs, dtype: jnp.dtype
) -> jax.Array:
    """softmax(Q K^T / sqrt(d) + bias, masked) V with grouped query heads; softmax in fp32.

    q: (batch, q_len, heads, head_dim); k, v: (batch, kv_len, kv_heads, head_dim).
    """
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d)
    logits = matmul("btkgd,bskd->bkgts", q, k, dtype) / math.sqrt(d)
    if inputs.bias is not None:
        logits = logits + inputs.bias
    if inputs.mask is not None:
        logits = jnp.where(inputs.mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = matmul("bkgts,bskd->btkgd", weights, v, dtype)
    return out.reshape(b, t, h, d).astype(dtype)


class Attention(nnx.Module):
    """Multi-head attention with optional grouped key/value heads; self- or cross-attention."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dtype = jnp.dtype(cfg.dtype)
        d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.wq = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), std)
        self.wk = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std)
        self.wv = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std)
        self.wo = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), out_std)
        if cfg.use_bias:
            self.bq = zeros_param((h, hd), ("heads", "head_dim"))
            self.bk = zeros_param((kv, hd), ("kv_heads", "head_dim"))
            self.bv = zeros_param((kv, hd), ("kv_heads", "head_dim"))
            self.bo = zeros_param((d,), ("embed",))
        else:
            self.bq = self.bk = self.bv = self.bo = None

    def _project(self, x: jax.Array, w: nnx.Param, b: nnx.Param | None, heads_axis: str) -> jax.Array:
        y = matmul("btd,dhk->bthk", x, w[...], self.dtype)
        if b is not None:
            y = y + b[...]
        return constrain(y.astype(self.dtype), ("batch", "length", heads_axis, "head_dim"))

    def __call__(self, x: jax.Array, inputs: AttentionInputs, memory: jax.Array | None = None) -> jax.Array:
        """Attend from x to itself, or to `memory` (cross-attention) when it is given."""
        source = x if memory is None else memory
        q = self._project(x, self.wq, self.bq, "heads")
        k = self._project(source, self.wk, self.bk, "kv_heads")
        v = self._project(source, self.wv, self.bv, "kv_heads")
        if inputs.rotary is not None:
            q, k = apply_rotary(q, inputs.rotary), apply_rotary(k, inputs.rotary)
        out = dot_product_attention(q, k, v, inputs, self.dtype)
        y = matmul("bthk,hkd->btd", out, self.wo[...], self.dtype)
        if self.bo is not None:
            y = y + self.bo[...]
        return y.astype(self.dtype)


class DecoderBlock(nnx.Module):
    """Pre-norm residual block: x + Attn(Norm(x)), then x + FFN(Norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dropout_rate = cfg.dropout
        self.attn_norm = make_norm(cfg, rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.ffn_norm = make_norm(cfg, rngs)
        self.ffn = FeedForward(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, inputs: AttentionInputs, dropout_key: jax.Array | None) -> jax.Array:
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        x = x + dropout(self.attn(self.attn_norm(x), inputs), self.dropout_rate, keys[0])
        x = constrain(x, ("batch", "length", "embed"))
        x = x + dropout(self.ffn(self.ffn_norm(x)), self.dropout_rate, keys[1])
        return constrain(x, ("batch", "length", "embed"))
