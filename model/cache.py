"""What decoding keeps between steps: every attention layer's keys and values, and the inputs to attend over them.

The training modules decode when given a cache: `Attention`, `Block`, `LayerStack` and `Tower`
take one and return it updated. Slot i of a row holds position i. Self-attention writes the
new tokens' keys and values at their positions; a t5 decoder's cross-attention reads the
encoder output's, projected once before decoding. The arrays live in inference/'s KVCache
between steps; this module only gives them the shape the blocks read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from scalelab.model.layers import AttentionInputs
from scalelab.model.masks import Pattern


@dataclasses.dataclass(frozen=True)
class KeyValues:
    """Keys and values attention keeps between decoding steps, in the compute dtype, keys already rotated under
    RoPE: one layer's, (batch, slots, kv_heads, head_dim) each, or a stack's, with a leading layers axis.

    Inside a stack's layer scan, each layer gets the whole stack and its own index, `layer`, and
    writes its new tokens straight into the stack: handing each layer a slice and stacking the
    updated slices copies every layer's whole cache once more per step. There, bf16 arrays are
    held as their bits (`as_bits`): XLA's CPU backend slices and scatters into a bf16 buffer by
    converting all of it to fp32 and back, while 16-bit integers are plain copies.

    An int8 cache (k and v int8) holds each token's keys and values on a symmetric int8 grid with
    one bf16 scale per (token, kv head), `k_scale` and `v_scale` shaped like k without head_dim:
    head_dim + 2 bytes per token and head, against 2 x head_dim in bf16.
    """

    k: jax.Array
    v: jax.Array
    layer: jax.Array | None = None  # the layer that reads and writes a stack; None: k and v are one layer's
    bits_of: Any = None  # the float dtype whose bits k and v hold as uint16 (see `as_bits`), or None
    k_scale: jax.Array | None = None  # int8 cache only: bf16 (..., slots, kv_heads) scales of k
    v_scale: jax.Array | None = None  # same for v

    @property
    def slots(self) -> int:
        """Positions a row can hold."""
        return self.k.shape[-3]

    def at(self, layer: jax.Array | None) -> KeyValues:
        """This cache as layer `layer` of a stack sees it (None: as the whole stack)."""
        return dataclasses.replace(self, layer=layer)

    def as_bits(self) -> KeyValues:
        """bf16 keys and values held as their bits (uint16); any other dtype as it is."""
        if self.bits_of is not None or self.k.dtype != jnp.bfloat16:
            return self
        k, v = (jax.lax.bitcast_convert_type(x, jnp.uint16) for x in (self.k, self.v))
        return dataclasses.replace(self, k=k, v=v, bits_of=self.k.dtype)

    def as_values(self) -> KeyValues:
        """The inverse of `as_bits`."""
        if self.bits_of is None:
            return self
        k, v = self._values(self.k, self.v)
        return dataclasses.replace(self, k=k, v=v, bits_of=None)

    def _values(self, *held: jax.Array) -> tuple[jax.Array, ...]:
        if self.bits_of is None:
            return held
        return tuple(jax.lax.bitcast_convert_type(x, self.bits_of) for x in held)

    def read(self) -> tuple[jax.Array, jax.Array]:
        """The keys and values of this layer, (batch, slots, kv_heads, head_dim) each."""
        held = (self.k, self.v) if self.k_scale is None else (self.k, self.v, self.k_scale, self.v_scale)
        if self.layer is not None:
            held = tuple(x[self.layer] for x in held)
        if self.k_scale is None:
            return self._values(*held)
        k, v, k_scale, v_scale = held  # int8: widened here, one layer at a time
        return k.astype(jnp.float32) * k_scale[..., None], v.astype(jnp.float32) * v_scale[..., None]

    def write(self, slots: jax.Array, k: jax.Array, v: jax.Array) -> KeyValues:
        """These with new tokens' k and v (batch, length, kv_heads, head_dim) at `slots` (batch, length) of this
        layer; a slot past the end is dropped."""
        rows = jnp.arange(k.shape[0])[:, None]
        where = (rows, slots) if self.layer is None else (self.layer, rows, slots)
        dtype = self.k.dtype if self.bits_of is None else self.bits_of

        def put(held: jax.Array, new: jax.Array) -> jax.Array:
            return held.at[where].set(jax.lax.bitcast_convert_type(new.astype(dtype), held.dtype), mode="drop")

        if self.k_scale is None:
            return dataclasses.replace(self, k=put(self.k, k), v=put(self.v, v))
        (k, k_scale), (v, v_scale) = _int8_per_head(k), _int8_per_head(v)

        def put_scale(held: jax.Array, new: jax.Array) -> jax.Array:
            return held.at[where].set(new, mode="drop")

        return dataclasses.replace(
            self,
            k=put(self.k, k),
            v=put(self.v, v),
            k_scale=put_scale(self.k_scale, k_scale),
            v_scale=put_scale(self.v_scale, v_scale),
        )


def _int8_per_head(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(int8 values, bf16 scales) of x (..., kv_heads, head_dim): one scale per head, max|x| / 127."""
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=-1)
    scale = jnp.where(amax > 0, amax / 127, 1.0).astype(jnp.bfloat16)
    values = jnp.clip(jnp.round(xf / scale.astype(jnp.float32)[..., None]), -127, 127).astype(jnp.int8)
    return values, scale


jax.tree_util.register_dataclass(
    KeyValues, data_fields=["k", "v", "layer", "k_scale", "v_scale"], meta_fields=["bits_of"]
)


@dataclasses.dataclass(frozen=True)
class BlockCache:
    """A block's cache: its self-attention's keys and values and, in a t5 decoder, the encoder output's
    that its cross-attention reads. A stack's has a leading layers axis on every array."""

    self_attn: KeyValues
    cross_attn: KeyValues | None = None

    def map(self, fn: Callable[[KeyValues], KeyValues]) -> BlockCache:
        """fn applied to each attention's keys and values."""
        return BlockCache(fn(self.self_attn), None if self.cross_attn is None else fn(self.cross_attn))


jax.tree_util.register_dataclass(BlockCache, data_fields=["self_attn", "cross_attn"], meta_fields=[])


def cached_self_attention_inputs(
    pattern: Pattern,
    positions: jax.Array,
    n_slots: int,
    rotary: tuple[jax.Array, jax.Array] | None,
    bias_fn: Callable[[jax.Array], jax.Array | None],
) -> AttentionInputs:
    """Decoding: self-attention inputs of new tokens at `positions` (batch, length) over a cache of `n_slots`.

    Slot i of a row holds position i, and each new token is written at its own position, so it
    sees the slots `pattern.allowed(position, slot)`: that hides the future (and so a padded
    prompt's padding and stale slots) and, with a sliding window, the slots that fell out of it.
    Relative and ALiBi biases are functions of slot - position, as in training. Every pattern is
    computed densely over the slots, its mask doing what a sparse kernel's layout does in training.
    """
    slots = jnp.arange(n_slots, dtype=jnp.int32)
    mask = pattern.allowed(positions[:, :, None], slots)
    return AttentionInputs(
        mask=mask, rotary=rotary, bias=bias_fn(slots - positions[:, :, None]), pattern=pattern, slots=positions
    )
