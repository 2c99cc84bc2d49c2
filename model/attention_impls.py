"""Attention implementations chosen by `model.attention_impl`: which code computes a pattern's attention.

`einsum` is scalelab's own kernels in model/attention.py (dense softmax attention with a
custom VJP, and the blockwise sliding and local+global kernels). The others are fused kernels:

- `xla`: `jax.nn.dot_product_attention(implementation="xla")` under a dense mask. It takes
  every mask, bias, dtype and head size, but scores every (query, key) pair, so sliding and
  sparse patterns save no memory with it.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, a GPU's flash attention.
  Causal, bidirectional and causal sliding masks are its own; packed documents, bidirectional
  windows and local+global become a dense additive mask. bfloat16 only, head_dim a multiple of 8
  up to 128 (Hopper takes 256; the limit every GPU has is kept), even lengths with a bias.
- `splash`: Pallas's TPU splash attention, with each pattern as its block-sparse mask and packed
  documents as its segment ids. No additive bias; the length must divide into 128-blocks.
- `auto`: cudnn on a GPU, splash on a TPU, einsum elsewhere.

A combination an implementation cannot run falls back to einsum with one notice line on stderr,
printed once per process. `cudnn` named on a machine without a GPU, or `splash` without a TPU, is
a ConfigError naming `model.attention_impl=auto`; SCALELAB_PALLAS_INTERPRET=1 runs splash on any
platform in Pallas's (slow) interpret mode, which is how the tests run it on a CPU.

Each fused implementation lays out its own inputs in `prepare` (once per forward pass) and
computes one layer in `attend`, like model/attention.py's kernels. Decoding with a KV cache
and cross-attention always use einsum.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.errors import ConfigError
from scalelab.model.axes import per_shard
from scalelab.model.masks import FullAttention, KernelRequest, LocalGlobal, Pattern, SlidingWindow

BiasFn = Callable[[jax.Array], jax.Array | None]

SPLASH_BLOCK = 128  # splash's smallest block: a TPU vreg's lanes
_shown_notices: set[str] = set()


def notice(message: str) -> None:
    """Print one line on stderr, once per process for each distinct message."""
    if message not in _shown_notices:
        _shown_notices.add(message)
        print(f"scalelab: {message}", file=sys.stderr, flush=True)


def same_segment(q_segments: jax.Array, k_segments: jax.Array) -> jax.Array:
    """True where query and key belong to one packed document: (..., q) x (..., k) -> (..., q, k)."""
    return q_segments[..., :, None] == k_segments[..., None, :]


def dense_mask(pattern: Pattern, length: int, segment_ids: jax.Array | None) -> jax.Array:
    """pattern.allowed over all (query, key) pairs, within packed documents: (batch or 1, q, k)."""
    q, k = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    mask = pattern.allowed(q, k)[None]
    return mask if segment_ids is None else mask & same_segment(segment_ids, segment_ids)


def dense_bias(bias_fn: BiasFn, length: int) -> jax.Array | None:
    """The position bias of every (query, key) pair, (1, heads, q, k) fp32, or None."""
    offsets = jnp.arange(length)[None, :] - jnp.arange(length)[:, None]
    bias = bias_fn(offsets)
    return None if bias is None else bias[None]


def scale_logits(logits: jax.Array, head_dim: int, scale: float | None) -> jax.Array:
    """Attention logits (or queries) times `scale`; None is the usual 1/sqrt(head_dim), computed as
    that division so a model without its own scale runs the same arithmetic as ever (model/mup.py)."""
    return logits / math.sqrt(head_dim) if scale is None else logits * scale


def only_causality(pattern: Pattern) -> bool:
    """True when the pattern is plain full attention: causal or bidirectional, nothing more."""
    return type(pattern) is FullAttention


class Fused:
    """A fused implementation: its support rules, its input layout and one layer's attention."""

    name = ""

    @staticmethod
    def unsupported(pattern: Pattern, length: int, segmented: bool, biased: bool) -> str | None:
        """Why this implementation cannot run `pattern` here (a short phrase), or None if it can."""
        return None

    @staticmethod
    def prepare(pattern: Pattern, length: int, segment_ids: jax.Array | None, bias: jax.Array | None) -> tuple:
        """(mask, bias) in this implementation's layout, each with a leading batch axis (1 when shared)."""
        raise NotImplementedError

    @staticmethod
    def attend(
        q: jax.Array, k: jax.Array, v: jax.Array, inputs: Any, dtype: jnp.dtype, scale: float | None = None
    ) -> jax.Array:
        """Attention of (batch, length, heads, head_dim) queries over (batch, length, kv_heads, head_dim);
        the logits are q.k times `scale` (None: 1/sqrt(head_dim))."""
        raise NotImplementedError


def _jax_attention(implementation: str, q, k, v, inputs: Any, dtype: jnp.dtype, scale: float | None) -> jax.Array:
    """jax.nn.dot_product_attention with `inputs.mask` (batch or 1, q, k) or the pattern's own causality."""
    pattern, mask, bias = inputs.pattern, inputs.mask, inputs.bias
    window = None
    if mask is None and type(pattern) is SlidingWindow:  # only cudnn leaves a causal window to the kernel
        window = pattern.reach
    out = jax.nn.dot_product_attention(
        q.astype(dtype),
        k.astype(dtype),
        v.astype(dtype),
        bias=None if bias is None else bias.astype(jnp.float32 if implementation == "xla" else dtype),
        mask=None if mask is None else mask[:, None],
        is_causal=mask is None and pattern.causal,
        local_window_size=window,
        scale=scale,  # None is its default, 1/sqrt(head_dim)
        implementation=implementation,
    )
    return out.astype(dtype)


class XlaAttention(Fused):
    """jax.nn.dot_product_attention(implementation="xla"): any mask as a dense one, any bias."""

    name = "xla"

    @staticmethod
    def prepare(pattern, length, segment_ids, bias):
        # Causal or bidirectional attention over one document needs no mask array at all.
        if only_causality(pattern) and segment_ids is None:
            return None, bias
        return dense_mask(pattern, length, segment_ids), bias

    @staticmethod
    def attend(q, k, v, inputs, dtype, scale=None):
        return _jax_attention("xla", q, k, v, inputs, dtype, scale)


class CudnnAttention(Fused):
    """cuDNN flash attention through jax.nn.dot_product_attention(implementation="cudnn")."""

    name = "cudnn"
    MAX_HEAD_DIM = 128

    @staticmethod
    def unsupported(pattern, length, segmented, biased):
        kernel = pattern.kernel
        if kernel.dtype != "bfloat16":
            return f"cuDNN attention needs bfloat16 inputs (model.dtype is {kernel.dtype})"
        if kernel.head_dim % 8 or kernel.head_dim > CudnnAttention.MAX_HEAD_DIM:
            return f"cuDNN attention needs a head_dim that is a multiple of 8 up to 128 (it is {kernel.head_dim})"
        if biased and length % 2:
            return f"cuDNN attention with a position bias needs an even length (it is {length})"
        return None

    @staticmethod
    def prepare(pattern, length, segment_ids, bias):
        native = only_causality(pattern) or (type(pattern) is SlidingWindow and pattern.causal)
        if native and segment_ids is None:
            return None, bias  # cuDNN's own causal mask and window skip the hidden blocks
        return dense_mask(pattern, length, segment_ids), bias

    @staticmethod
    def attend(q, k, v, inputs, dtype, scale=None):
        return _jax_attention("cudnn", q, k, v, inputs, dtype, scale)


def interpret_pallas() -> bool:
    """True when SCALELAB_PALLAS_INTERPRET=1 asks for Pallas kernels in interpret mode off a TPU."""
    return os.environ.get("SCALELAB_PALLAS_INTERPRET", "") == "1"


def splash_mask(pattern: Pattern, length: int) -> Any:
    """The pattern as one head's splash mask over (length, length); splash skips its all-masked blocks."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    shape = (length, length)
    if type(pattern) is FullAttention:
        return masks.CausalMask(shape) if pattern.causal else masks.FullMask(shape)
    if type(pattern) is SlidingWindow:
        return masks.LocalMask(shape, window_size=pattern.reach, offset=0)
    if type(pattern) is LocalGlobal:  # band plus global rows and columns: small enough as a dense table
        positions = np.arange(length)
        return masks.NumpyMask(np.asarray(pattern.allowed(positions[:, None], positions[None, :])))
    raise TypeError(f"no splash mask for {type(pattern).__name__}")


@functools.cache
def splash_kernel(pattern: Pattern, length: int, heads: int, shared_kv: bool, interpret: bool) -> Callable:
    """A splash kernel for one batch row: (heads, length, head_dim) queries; keys and values per head,
    or one (length, head_dim) pair that all the heads share (`shared_kv`, one group of grouped-query heads)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    block = max(b for b in (512, 256, SPLASH_BLOCK) if length % b == 0)
    sizes = dict.fromkeys(
        ("block_q", "block_kv", "block_kv_compute", "block_q_dkv", "block_kv_dkv", "block_kv_dkv_compute"), block
    )
    sizes.update(block_q_dq=block, block_kv_dq=block)
    mask = masks.MultiHeadMask([splash_mask(pattern, length)] * heads)
    make = splash.make_splash_mqa if shared_kv else splash.make_splash_mha
    # The kernel holds its block tables as arrays: made under a trace they would be that trace's
    # tracers, and the cache would leak them into the next one.
    with jax.ensure_compile_time_eval():
        return make(mask, block_sizes=splash.BlockSizes(**sizes), head_shards=1, q_seq_shards=1, interpret=interpret)


class SplashAttention(Fused):
    """Pallas TPU splash attention: block-sparse masks, packed documents as segment ids, no bias."""

    name = "splash"

    @staticmethod
    def unsupported(pattern, length, segmented, biased):
        if biased:
            return "splash attention takes no additive position bias (model.position relative or alibi)"
        if length % SPLASH_BLOCK:
            return f"splash attention needs a length that is a multiple of {SPLASH_BLOCK} (it is {length})"
        return None

    @staticmethod
    def prepare(pattern, length, segment_ids, bias):
        return segment_ids, None  # the mask is static (splash_mask); documents come as segment ids

    @staticmethod
    def attend(q, k, v, inputs, dtype, scale=None):
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

        interpret = jax.default_backend() != "tpu"
        # Splash does not scale the logits; queries carry the scale.
        q = scale_logits(q.astype(jnp.float32), q.shape[-1], scale).astype(dtype)
        k, v = k.astype(dtype), v.astype(dtype)
        segments = inputs.mask
        if segments is None:
            segments = jnp.zeros(q.shape[:2], jnp.int32)

        def call(kernel: Callable) -> Callable:
            return lambda q, k, v, seg: kernel(q, k, v, segment_ids=splash.SegmentIds(q=seg, kv=seg))

        def local(q, k, v, segments):  # one device's rows and heads; heads lead, as splash lays them out
            b, n, h, d = q.shape
            kv = k.shape[2]
            q = jnp.moveaxis(q, 2, 1).reshape(b, kv, h // kv, n, d)
            k, v = (jnp.moveaxis(x, 2, 1) for x in (k, v))
            if kv == h:  # one kernel over all the heads of a row
                out = jax.vmap(call(splash_kernel(inputs.pattern, n, h, False, interpret)))(q[:, :, 0], k, v, segments)
            else:  # each group of query heads shares one key/value head
                per_group = jax.vmap(call(splash_kernel(inputs.pattern, n, h // kv, True, interpret)), (0, 0, 0, None))
                out = jax.vmap(per_group)(q, k, v, segments).reshape(b, h, n, d)
            return jnp.moveaxis(out, 1, 2)

        # A Pallas call is opaque to XLA's partitioner, which would gather it whole onto every device:
        # it runs per shard instead, rows split like the batch and heads like the tensor axis.
        rows = ("batch", "length")
        sharded = per_shard(
            local,
            ((*rows, "heads", "head_dim"), (*rows, "kv_heads", "head_dim"), (*rows, "kv_heads", "head_dim"), rows),
            (*rows, "heads", "head_dim"),
        )
        return sharded(q, k, v, segments).astype(dtype)


FUSED_IMPLEMENTATIONS: dict[str, type[Fused]] = {
    "xla": XlaAttention,
    "cudnn": CudnnAttention,
    "splash": SplashAttention,
}

# model.attention_impl's choices; the values say where each runs (None: anywhere).
ATTENTION_IMPLEMENTATIONS: dict[str, str | None] = {
    "auto": None,
    "einsum": None,
    "xla": None,
    "cudnn": "gpu",
    "splash": "tpu",
}
AUTO_BY_PLATFORM = {"gpu": "cudnn", "tpu": "splash"}


def resolve(kernel: KernelRequest) -> str:
    """The implementation `kernel.name` means on this platform; ConfigError for a kernel it lacks."""
    platform = jax.default_backend()
    if kernel.name == "auto":
        return AUTO_BY_PLATFORM.get(platform, "einsum")
    needs = ATTENTION_IMPLEMENTATIONS[kernel.name]
    if needs is not None and needs != platform and not (kernel.name == "splash" and interpret_pallas()):
        hint = " (or SCALELAB_PALLAS_INTERPRET=1 for its slow interpret mode)" if kernel.name == "splash" else ""
        raise ConfigError(
            f"model.attention_impl={kernel.name} needs a {needs.upper()}, but JAX runs on {platform}; "
            f"set model.attention_impl=auto{hint}"
        )
    return kernel.name


def choose(pattern: Pattern, length: int, segment_ids: jax.Array | None, bias_fn: BiasFn) -> tuple[str, Any, Any]:
    """(implementation, mask, bias) for self-attention: the requested fused kernel's inputs, or
    ("einsum", None, None) when einsum computes it (requested, or a fallback with its notice)."""
    name = resolve(pattern.kernel)
    if name == "einsum":
        return name, None, None
    impl = FUSED_IMPLEMENTATIONS[name]
    bias = dense_bias(bias_fn, length)
    reason = impl.unsupported(pattern, length, segment_ids is not None, bias is not None)
    if reason is not None:
        notice(f"model.attention_impl={pattern.kernel.name}: {reason}; einsum computes this attention")
        return "einsum", None, None
    mask, bias = impl.prepare(pattern, length, segment_ids, bias)
    return name, mask, bias
