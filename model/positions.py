"""Positional encodings, chosen by `model.position` through the POSITION_ENCODINGS registry.

An encoding may add to the token embeddings (absolute kinds) and may supply the rotary
tables that attention applies to queries and keys (RoPE).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.config import ModelConfig
from model.layers import param


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
    """The fixed sin/cos embeddings of the original Transformer."""

    def embed(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        angles = sinusoid_angles(positions, self.cfg.d_model, 10000.0)
        table = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
        return x + table.astype(x.dtype)


POSITION_ENCODINGS: dict[str, type[PositionEncoding]] = {
    "rope": RotaryPositions,
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
}
