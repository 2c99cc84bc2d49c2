"""Positional encodings, chosen by `model.position` through the POSITION_ENCODINGS registry.

An encoding may add to the token embeddings (absolute kinds), may supply the rotary tables
that attention applies to queries and keys (RoPE), and may supply an additive attention
bias as a function of the key-minus-query offset (T5 relative buckets, ALiBi). Offsets are
index distances, which equal position distances inside a packed document.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.model.config import ModelConfig
from scalelab.model.layers import param


def sinusoid_angles(positions: jax.Array, dim: int, theta: float) -> jax.Array:
    """Angles position / theta^(2i/dim) for i < dim/2, in fp32: shape positions.shape + (dim // 2,)."""
    inv_freq = theta ** (-jnp.arange(0, dim // 2, dtype=jnp.float32) * 2.0 / dim)
    return positions.astype(jnp.float32)[..., None] * inv_freq


class PositionEncoding(nnx.Module):
    """No absolute embedding and no rotation: the base of every encoding."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg

    def embed(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Add absolute position information to token embeddings x (batch, length, d_model)."""
        return x

    def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array] | None:
        """(cos, sin) tables for rotary attention, or None."""
        return None

    def attention_bias(self, relative: jax.Array, bidirectional: bool) -> jax.Array | None:
        """fp32 logits bias (..., heads, q, k) for key-minus-query offsets (..., q, k), or None."""
        return None


class RotaryPositions(PositionEncoding):
    """RoPE: queries and keys are rotated by position-dependent angles."""

    def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        angles = sinusoid_angles(positions, self.cfg.dim_per_head, self.cfg.rope_theta)
        return jnp.cos(angles), jnp.sin(angles)


class LearnedPositions(PositionEncoding):
    """A learned table of absolute position embeddings, up to max_seq_len."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.table = param(rngs, (cfg.max_seq_len, cfg.d_model), ("positions", "embed"), cfg.init_std)

    def embed(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        return x + self.table[...][positions].astype(x.dtype)


class SinusoidalPositions(PositionEncoding):
    """The fixed sin/cos embeddings of the original Transformer, at the scale of the token embeddings."""

    def embed(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        angles = sinusoid_angles(positions, self.cfg.d_model, 10000.0)
        table = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
        # sin/cos have an RMS of 1/sqrt(2), 35x the tokens' init_std=0.02: added raw, position drowned
        # out which token it was and gpt-tiny hardly learned (5.55 -> 5.31 in 150 steps, 1.89 learned).
        # The original Transformer scaled the tokens up by sqrt(d_model) instead; here the table comes
        # down to the RMS that learned positions start with.
        return x + (table * (self.cfg.init_std * math.sqrt(2))).astype(x.dtype)


def relative_bucket(relative: jax.Array, bidirectional: bool, n_buckets: int, max_distance: int) -> jax.Array:
    """T5's bucket of each key-minus-query offset: one per offset near zero, logarithmic beyond.

    Bidirectional attention gives the past and the future half the buckets each; causal
    attention only looks back, so every bucket describes the past.
    """
    distance = -relative  # how far back the key lies
    offset = jnp.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        offset = jnp.where(distance < 0, n_buckets, 0)
        distance = jnp.abs(distance)
    else:
        distance = jnp.maximum(distance, 0)
    exact = n_buckets // 2
    scale = (n_buckets - exact) / math.log(max_distance / exact)
    far = exact + (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact) * scale).astype(relative.dtype)
    return offset + jnp.where(distance < exact, distance, jnp.minimum(far, n_buckets - 1))


class RelativePositions(PositionEncoding):
    """T5: a learned scalar bias per head for each bucket of key-minus-query offset."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.table = param(rngs, (cfg.relative_buckets, cfg.n_heads), ("relative_buckets", "heads"), cfg.init_std)

    def attention_bias(self, relative: jax.Array, bidirectional: bool) -> jax.Array:
        buckets = relative_bucket(relative, bidirectional, self.cfg.relative_buckets, self.cfg.relative_max_distance)
        return jnp.moveaxis(self.table[...][buckets], -1, -3)


def alibi_slopes(n_heads: int) -> jax.Array:
    """ALiBi's per-head slopes: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8)."""
    return 2.0 ** (-8.0 * jnp.arange(1, n_heads + 1, dtype=jnp.float32) / n_heads)


class ALiBiPositions(PositionEncoding):
    """ALiBi: each head lowers a logit in proportion to the key's distance, with a fixed slope."""

    def attention_bias(self, relative: jax.Array, bidirectional: bool) -> jax.Array:
        # The causal mask already hides the future, so |offset| serves both directions.
        distance = jnp.abs(relative).astype(jnp.float32)[..., None, :, :]
        return -alibi_slopes(self.cfg.n_heads)[:, None, None] * distance


POSITION_ENCODINGS: dict[str, type[PositionEncoding]] = {
    "rope": RotaryPositions,
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "relative": RelativePositions,
    "alibi": ALiBiPositions,
}
