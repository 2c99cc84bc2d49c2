"""Attention: the kernel of each pattern, the per-forward inputs they need, and the layer.

Each kernel has two halves. `prepare` builds the mask and position bias once per forward
pass, in the kernel's own layout, and the layer scan closes over them. `attend` computes
the attention of one layer. Full attention scores all (query, key) pairs. Sliding and
sparse attention reshape queries into blocks and keys into each block's span of nearby
blocks, so memory and FLOPs grow as O(n·w); their masks equal `pattern.allowed` exactly.

`model.attention_impl` may hand self-attention to a fused kernel instead (model/attention_impls.py);
the kernels here are its `einsum` implementation and every fallback.

Decoding gives the layer a cache (model/cache.py's KeyValues) of earlier tokens' keys and
values: new tokens write theirs into it and attend densely over all its slots.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.model.attention_impls import FUSED_IMPLEMENTATIONS, choose, same_segment, scale_logits
from scalelab.model.axes import constrain
from scalelab.model.cache import KeyValues
from scalelab.model.config import ModelConfig
from scalelab.model.layers import AttentionInputs, matmul, pack_residual, param, unpack_residual, zeros_param
from scalelab.model.masks import BIDIRECTIONAL, Blocking, FullAttention, LocalGlobal, Pattern, SlidingWindow
from scalelab.model.mup import attention_logit_scale, hidden_init_scale

# Key-minus-query offsets (..., q, k) -> fp32 bias (..., heads, q, k), or None for no bias.
BiasFn = Callable[[jax.Array], jax.Array | None]


@dataclasses.dataclass(frozen=True)
class CrossInputs:
    """A decoder block's inputs: its self-attention's, its cross-attention's and the encoder output."""

    self_attn: AttentionInputs
    cross_attn: AttentionInputs
    memory: jax.Array  # (batch, encoder length, d_model)


jax.tree_util.register_dataclass(CrossInputs, data_fields=["self_attn", "cross_attn", "memory"], meta_fields=[])


def apply_rotary(x: jax.Array, rotary: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotate pairs (first half, second half) of the head dimension by position-dependent angles."""
    cos, sin = rotary
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    bias: jax.Array | None,
    dtype: jnp.dtype,
    scale: float | None = None,
) -> jax.Array:
    """softmax(Q K^T * scale + bias, masked) V with grouped query heads; softmax in fp32.

    q: (..., q_len, heads, head_dim); k, v: (..., kv_len, kv_heads, head_dim), where `...` is
    (batch,) or (batch, blocks). mask broadcasts to (..., q_len, kv_len), bias to
    (..., heads, q_len, kv_len). scale: None is 1/sqrt(head_dim) (see model/mup.py).
    """
    *lead, t, h, d = q.shape
    kv_heads = k.shape[-2]
    if bias is None:
        # Query heads of a group share their key/value head; repeating it keeps the einsums plain
        # (batch..., heads) ones, which XLA lays out with far fewer (query, key)-sized transposes.
        k, v = (jnp.repeat(x, h // kv_heads, axis=-2) for x in (k, v))
        return _softmax_attention(jnp.dtype(dtype), scale)(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask)
    q = q.reshape(*lead, t, kv_heads, h // kv_heads, d)
    logits = scale_logits(matmul("...tkgd,...skd->...kgts", q, k, dtype), d, scale)
    logits = logits + bias.reshape(*bias.shape[:-3], kv_heads, h // kv_heads, *bias.shape[-2:])
    if mask is not None:
        logits = jnp.where(mask[..., None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = matmul("...kgts,...skd->...tkgd", weights, v, dtype)
    return out.reshape(*lead, t, h, d).astype(dtype)


@functools.cache
def _softmax_attention(dtype: jnp.dtype, scale: float | None = None) -> Callable:
    """f(q, k, v, mask) for (..., length, heads, head_dim) inputs in `dtype`: the attention above
    without a bias (logits times `scale`), with a backward pass that saves no (query, key)-sized array.

    The plain backward keeps every layer's fp32 probabilities and reduces them against their
    gradient over the keys; both are slow, memory-bound passes on a CPU. This one keeps the
    row max and sum, recomputes the probabilities with one more QK^T matmul, and gets the
    row sums from rowsum(P * dP) = rowsum(dO * O), a reduction over head_dim (FlashAttention's
    identity). Matmuls take `dtype` inputs and accumulate in fp32; the softmax is fp32.
    """
    f32 = jnp.float32

    def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=f32)

    def scores(q: jax.Array, k: jax.Array, mask: jax.Array | None) -> jax.Array:
        logits = scale_logits(einsum("...thd,...shd->...hts", q, k), q.shape[-1], scale)
        if mask is None:
            return logits
        # Adding a mask-shaped penalty, not where(mask, logits, min): XLA would hoist the latter's
        # logits-shaped block of constants out of the layer loop and read it back every layer.
        return logits + jnp.where(mask, 0.0, jnp.finfo(f32).min)[..., None, :, :]

    def forward_with_residuals(q, k, v, mask):
        logits = scores(q, k, mask)
        row_max = jnp.max(logits, axis=-1, keepdims=True)
        unnormalized = jnp.exp(logits - row_max)
        row_sum = jnp.sum(unnormalized, axis=-1, keepdims=True)
        out = einsum("...hts,...shd->...thd", unnormalized / row_sum, v)
        saved = tuple(pack_residual(x) for x in (q, k, v))
        return out.astype(dtype), (*saved, mask, out, row_max, row_sum)

    def backward(residuals, d_out):
        *saved, mask, out, row_max, row_sum = residuals
        q, k, v = (unpack_residual(x, dtype) for x in saved)
        probs = jnp.exp(scores(q, k, mask) - row_max) / row_sum  # exactly the forward's probabilities
        d_v = einsum("...hts,...thd->...shd", probs, d_out)
        d_probs = einsum("...thd,...shd->...hts", d_out, v)
        row_dot = jnp.moveaxis(jnp.sum(d_out.astype(f32) * out, axis=-1), -2, -1)[..., None]
        d_logits = scale_logits(probs * (d_probs - row_dot), q.shape[-1], scale)
        if mask is not None:  # a row that sees no key has uniform weights, but masked logits get no gradient
            d_logits = d_logits * mask[..., None, :, :]  # (a where() would materialise a block of zeros)
        d_q = einsum("...hts,...shd->...thd", d_logits, k)
        d_k = einsum("...hts,...thd->...shd", d_logits, q)
        return d_q.astype(dtype), d_k.astype(dtype), d_v.astype(dtype), None

    attention = jax.custom_vjp(lambda q, k, v, mask: forward_with_residuals(q, k, v, mask)[0])
    attention.defvjp(forward_with_residuals, backward)
    return attention


def to_blocks(x: jax.Array, blocks: Blocking) -> jax.Array:
    """(batch, length, ...) -> (batch, count, size, ...), zero-padded at the end."""
    padded = jnp.pad(x, [(0, 0), (0, blocks.count * blocks.size - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    return padded.reshape(x.shape[0], blocks.count, blocks.size, *x.shape[2:])


def to_spans(x: jax.Array, blocks: Blocking) -> jax.Array:
    """(batch, length, ...) -> (batch, count, span, ...): the keys each query block scores."""
    left = blocks.before * blocks.size
    right = blocks.count * blocks.size - x.shape[1] + blocks.after * blocks.size
    padded = jnp.pad(x, [(0, 0), (left, right)] + [(0, 0)] * (x.ndim - 2))
    grouped = padded.reshape(x.shape[0], blocks.count + blocks.before + blocks.after, blocks.size, *x.shape[2:])
    shifted = [grouped[:, j : j + blocks.count] for j in range(blocks.before + 1 + blocks.after)]
    return jnp.concatenate(shifted, axis=2)


def _bias(bias_fn: BiasFn, relative: jax.Array) -> jax.Array | None:
    """The bias for `relative` offsets with a leading batch axis of 1, or None."""
    bias = bias_fn(relative)
    return None if bias is None else bias[None]


class Kernel(Protocol):
    """How one attention pattern lays out its mask and bias and computes attention."""

    @staticmethod
    def prepare(pattern: Any, length: int, segment_ids: jax.Array | None, bias_fn: BiasFn) -> tuple[Any, Any]: ...

    @staticmethod
    def attend(
        q: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs, dtype: jnp.dtype, scale: float | None = None
    ) -> jax.Array: ...


class DenseKernel:
    """Full attention: mask (batch or 1, q, k) and bias (1, heads, q, k)."""

    @staticmethod
    def prepare(
        pattern: FullAttention, length: int, segment_ids: jax.Array | None, bias_fn: BiasFn
    ) -> tuple[jax.Array, jax.Array | None]:
        q, k = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
        mask = pattern.allowed(q, k)[None]
        if segment_ids is not None:
            mask = mask & same_segment(segment_ids, segment_ids)
        return mask, _bias(bias_fn, k - q)

    @staticmethod
    def attend(
        q: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs, dtype: jnp.dtype, scale: float | None = None
    ) -> jax.Array:
        return dot_product_attention(q, k, v, inputs.mask, inputs.bias, dtype, scale)


class BandedKernel:
    """Sliding window: mask (batch or 1, count, size, span) and bias (1, 1, heads, size, span)."""

    @staticmethod
    def prepare(
        pattern: SlidingWindow, length: int, segment_ids: jax.Array | None, bias_fn: BiasFn
    ) -> tuple[jax.Array, jax.Array | None]:
        blocks = pattern.blocking(length)
        q, k = blocks.query_index(), blocks.key_index()
        mask = (pattern.allowed(q, k) & (k >= 0) & (k < length))[None]
        if segment_ids is not None:
            mask = mask & same_segment(to_blocks(segment_ids, blocks), to_spans(segment_ids, blocks))
        # Every block sees the same offsets, so one (size, span) bias serves them all.
        return mask, _bias(bias_fn, k[:1] - q[:1])

    @staticmethod
    def attend(
        q: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs, dtype: jnp.dtype, scale: float | None = None
    ) -> jax.Array:
        b, n, h, d = q.shape
        blocks = inputs.pattern.blocking(n)
        out = dot_product_attention(
            to_blocks(q, blocks), to_spans(k, blocks), to_spans(v, blocks), inputs.mask, inputs.bias, dtype, scale
        )
        return out.reshape(b, blocks.count * blocks.size, h, d)[:, :n]


class LocalGlobalKernel:
    """Sparse: each query block scores its band plus the global keys; the global queries score every key.

    mask and bias are pairs: the blocks' (batch or 1, count, size, span + globals) and the global
    rows' (batch or 1, globals, length); a global key is masked out of the band so it counts once.
    """

    @staticmethod
    def prepare(
        pattern: LocalGlobal, length: int, segment_ids: jax.Array | None, bias_fn: BiasFn
    ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array] | None]:
        blocks, n_global = pattern.blocking(length), pattern.globals_in(length)
        q, k = blocks.query_index(), blocks.key_index()
        global_k = jnp.broadcast_to(jnp.arange(n_global), (blocks.count, 1, n_global))
        band = pattern.visible(q, k) & pattern.local(q, k) & (k >= n_global) & (k < length)
        block_mask = jnp.concatenate([band, pattern.visible(q, global_k)], axis=-1)[None]
        row_q, row_k = jnp.arange(n_global)[:, None], jnp.arange(length)[None, :]
        row_mask = pattern.visible(row_q, row_k)[None]
        if segment_ids is not None:
            global_segments = jnp.broadcast_to(
                segment_ids[:, None, :n_global], (len(segment_ids), blocks.count, n_global)
            )
            key_segments = jnp.concatenate([to_spans(segment_ids, blocks), global_segments], axis=-1)
            block_mask = block_mask & same_segment(to_blocks(segment_ids, blocks), key_segments)
            row_mask = row_mask & same_segment(segment_ids[:, :n_global], segment_ids)
        block_bias = _bias(bias_fn, jnp.concatenate([k - q, global_k - q], axis=-1))
        row_bias = _bias(bias_fn, row_k - row_q)
        return (block_mask, row_mask), None if block_bias is None else (block_bias, row_bias)

    @staticmethod
    def attend(
        q: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs, dtype: jnp.dtype, scale: float | None = None
    ) -> jax.Array:
        b, n, h, d = q.shape
        pattern = inputs.pattern
        blocks, n_global = pattern.blocking(n), pattern.globals_in(n)
        (block_mask, row_mask), (block_bias, row_bias) = inputs.mask, inputs.bias or (None, None)

        def with_globals(x: jax.Array) -> jax.Array:
            shared = jnp.broadcast_to(x[:, None, :n_global], (b, blocks.count, *x[:, :n_global].shape[1:]))
            return jnp.concatenate([to_spans(x, blocks), shared], axis=2)

        local = dot_product_attention(
            to_blocks(q, blocks), with_globals(k), with_globals(v), block_mask, block_bias, dtype, scale
        )
        local = local.reshape(b, blocks.count * blocks.size, h, d)
        rows = dot_product_attention(q[:, :n_global], k, v, row_mask, row_bias, dtype, scale)
        return jnp.concatenate([rows, local[:, n_global:n]], axis=1)


ATTENTION_KERNELS: dict[type[Pattern], type[Kernel]] = {
    FullAttention: DenseKernel,
    SlidingWindow: BandedKernel,
    LocalGlobal: LocalGlobalKernel,
}


def self_attention_inputs(
    pattern: Pattern,
    length: int,
    segment_ids: jax.Array | None,
    rotary: tuple[jax.Array, jax.Array] | None,
    bias_fn: BiasFn,
) -> AttentionInputs:
    """Self-attention inputs over `length` positions, in the layout of the kernel that computes `pattern`.

    The returned pattern's kernel names the implementation chosen (`auto` resolved, fallbacks
    applied), so each layer's `Attention` runs that one.
    """
    implementation, mask, bias = choose(pattern, length, segment_ids, bias_fn)
    if implementation == "einsum":
        mask, bias = ATTENTION_KERNELS[type(pattern)].prepare(pattern, length, segment_ids, bias_fn)
    chosen = dataclasses.replace(pattern, kernel=dataclasses.replace(pattern.kernel, name=implementation))
    return AttentionInputs(mask=mask, rotary=rotary, bias=bias, pattern=chosen)


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, inputs: AttentionInputs, dtype: jnp.dtype, scale: float | None = None
) -> jax.Array:
    """One layer's attention, by the implementation `inputs.pattern.kernel` names (einsum: the pattern's kernel);
    logits are q.k times `scale`, None meaning 1/sqrt(head_dim)."""
    kernel = FUSED_IMPLEMENTATIONS.get(inputs.pattern.kernel.name) or ATTENTION_KERNELS[type(inputs.pattern)]
    return kernel.attend(q, k, v, inputs, dtype, scale)


def cross_attention_inputs(q_segments: jax.Array | None, kv_segments: jax.Array | None) -> AttentionInputs:
    """Cross-attention sees every encoder position of the query's document (no positions, no bias).

    Without decoder segment ids every query belongs to segment 1, the first document of a
    packed row; encoder segment 0 (padding) is then never attended to.
    """
    if kv_segments is None:
        return AttentionInputs(pattern=BIDIRECTIONAL)
    if q_segments is None:
        q_segments = jnp.ones((kv_segments.shape[0], 1), kv_segments.dtype)
    return AttentionInputs(mask=same_segment(q_segments, kv_segments), pattern=BIDIRECTIONAL)


class Attention(nnx.Module):
    """Multi-head attention with optional grouped key/value heads; self- or cross-attention."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dtype = jnp.dtype(cfg.dtype)
        d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        width = hidden_init_scale(cfg)  # 1.0 under standard; µP's fan-in factor relative to the base width
        std, out_std = cfg.init_std * width, cfg.init_std / math.sqrt(2 * cfg.n_layers) * width
        self.logit_scale = attention_logit_scale(cfg)  # None: the kernels' own 1/sqrt(head_dim)
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

    def qkv(
        self, x: jax.Array, source: jax.Array, rotary: tuple[jax.Array, jax.Array] | None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries from x, keys and values from `source`, in the compute dtype; q and k rotated if `rotary`."""
        q = self._project(x, self.wq, self.bq, "heads")
        k = self._project(source, self.wk, self.bk, "kv_heads")
        v = self._project(source, self.wv, self.bv, "kv_heads")
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        return q, k, v

    def output(self, out: jax.Array) -> jax.Array:
        """The output projection of attended values (batch, length, heads, head_dim) back to d_model."""
        y = matmul("bthk,hkd->btd", out, self.wo[...], self.dtype)
        if self.bo is not None:
            y = y + self.bo[...]
        return y.astype(self.dtype)

    def keys_values(self, source: jax.Array) -> KeyValues:
        """Unrotated keys and values of `source` (batch, length, d_model): what a decoder's cross-attention
        reads of the encoder output, projected once before decoding."""
        return KeyValues(
            *(self._project(source, w, b, "kv_heads") for w, b in ((self.wk, self.bk), (self.wv, self.bv)))
        )

    def __call__(
        self,
        x: jax.Array,
        inputs: AttentionInputs,
        memory: jax.Array | None = None,
        cache: KeyValues | None = None,
    ) -> jax.Array | tuple[jax.Array, KeyValues]:
        """Attend from x to itself, or to `memory` (cross-attention) when it is given.

        Decoding passes this layer's `cache` and gets (y, the updated cache): see `attend_cached`.
        """
        if cache is not None:
            return self.attend_cached(x, inputs, cache)
        q, k, v = self.qkv(x, x if memory is None else memory, inputs.rotary)
        return self.output(attend(q, k, v, inputs, self.dtype, self.logit_scale))

    def attend_cached(self, x: jax.Array, inputs: AttentionInputs, cache: KeyValues) -> tuple[jax.Array, KeyValues]:
        """Decoding: new tokens x attend over every slot of `cache`, as `inputs.mask` allows; (y, cache).

        Self-attention (inputs.slots set) first writes x's own keys and values into the cache at
        those slots. A cross-attention cache holds the encoder output's (`keys_values`) and is only read.
        """
        if inputs.slots is None:
            q = self._project(x, self.wq, self.bq, "heads")
        else:
            q, k, v = self.qkv(x, x, inputs.rotary)
            cache = cache.write(inputs.slots, k, v)
        keys, values = cache.read()
        out = dot_product_attention(q, keys, values, inputs.mask, inputs.bias, self.dtype, self.logit_scale)
        return self.output(out), cache
