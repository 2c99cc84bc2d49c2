"""Residual blocks: self-attention and a feed-forward layer, plus cross-attention in a T5 decoder.

Where the norm sits is chosen by `model.norm_position` through NORM_PLACEMENTS: before each
sublayer (pre-norm, GPT-2 onwards) or after each residual sum ("Add & Norm", the original
Transformer and BERT). The placement also decides which norms surround the whole stack.

Given a BlockCache (decoding), a block's attention reads and updates it, and the block returns
it beside x; without one, the block is exactly the training block.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
from flax import nnx

from scalelab.model.attention import Attention, CrossInputs
from scalelab.model.axes import constrain
from scalelab.model.cache import BlockCache, KeyValues
from scalelab.model.config import ModelConfig
from scalelab.model.layers import AttentionInputs, FeedForward, dropout, make_norm

Sublayer = Callable[[jax.Array], jax.Array]


def pre_norm(x: jax.Array, sublayer: Sublayer, norm: nnx.Module, rate: float, key: jax.Array | None) -> jax.Array:
    """x + f(norm(x)): the residual stream itself is never normalised."""
    return x + dropout(sublayer(norm(x)), rate, key)


def post_norm(x: jax.Array, sublayer: Sublayer, norm: nnx.Module, rate: float, key: jax.Array | None) -> jax.Array:
    """norm(x + f(x)): "Add & Norm" after every sublayer."""
    return norm(x + dropout(sublayer(x), rate, key))


@dataclasses.dataclass(frozen=True)
class NormPlacement:
    """One residual form, and the extra norms a stack of such blocks needs."""

    residual: Callable[..., jax.Array]
    norm_embeddings: bool  # post-norm blocks expect normalised inputs, so the embeddings are normalised
    norm_output: bool  # pre-norm blocks leave the stream unnormalised, so a final norm follows the stack


NORM_PLACEMENTS: dict[str, NormPlacement] = {
    "pre": NormPlacement(pre_norm, norm_embeddings=False, norm_output=True),
    "post": NormPlacement(post_norm, norm_embeddings=True, norm_output=False),
}


def _split(key: jax.Array | None, count: int) -> tuple[jax.Array | None, ...]:
    return (None,) * count if key is None else tuple(jax.random.split(key, count))


class Block(nnx.Module):
    """Self-attention, then a feed-forward layer: the block of GPT, BERT and the T5 encoder."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dropout_rate = cfg.dropout
        self.norm_position = cfg.norm_position
        self.attn_norm = make_norm(cfg, rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.ffn_norm = make_norm(cfg, rngs)
        self.ffn = FeedForward(cfg, rngs=rngs)

    def _residual(self, x: jax.Array, sublayer: Sublayer, norm: nnx.Module, key: jax.Array | None) -> jax.Array:
        x = NORM_PLACEMENTS[self.norm_position].residual(x, sublayer, norm, self.dropout_rate, key)
        return constrain(x, ("batch", "length", "embed"))

    def _attention_residual(
        self,
        x: jax.Array,
        attn: Attention,
        inputs: AttentionInputs,
        norm: nnx.Module,
        key: jax.Array | None,
        cache: KeyValues | None,
        memory: jax.Array | None = None,
    ) -> tuple[jax.Array, KeyValues | None]:
        """The residual around an attention sublayer, and the attention's cache as it left it (None without one)."""
        if cache is None:
            return self._residual(x, functools.partial(attn, inputs=inputs, memory=memory), norm, key), None
        left: list[KeyValues] = []  # the residual form calls the sublayer once, for its output only

        def sublayer(h: jax.Array) -> jax.Array:
            y, updated = attn(h, inputs, memory, cache)
            left.append(updated)
            return y

        return self._residual(x, sublayer, norm, key), left[0]

    def __call__(
        self, x: jax.Array, inputs: AttentionInputs, dropout_key: jax.Array | None, cache: BlockCache | None = None
    ) -> jax.Array | tuple[jax.Array, BlockCache]:
        """x after the block; decoding passes its `cache` and gets (x, the updated cache)."""
        attn_key, ffn_key = _split(dropout_key, 2)
        own = None if cache is None else cache.self_attn
        x, own = self._attention_residual(x, self.attn, inputs, self.attn_norm, attn_key, own)
        x = self._residual(x, self.ffn, self.ffn_norm, ffn_key)
        return x if cache is None else (x, BlockCache(own))


class CrossBlock(Block):
    """Causal self-attention, cross-attention to the encoder output, then feed-forward (T5 decoder)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.cross_norm = make_norm(cfg, rngs)
        self.cross_attn = Attention(cfg, rngs=rngs)

    def __call__(
        self, x: jax.Array, inputs: CrossInputs, dropout_key: jax.Array | None, cache: BlockCache | None = None
    ) -> jax.Array | tuple[jax.Array, BlockCache]:
        """x after the block; decoding passes its `cache`, whose cross_attn holds the encoder output's keys and
        values (inputs.memory is then None), and gets (x, the updated cache)."""
        attn_key, cross_key, ffn_key = _split(dropout_key, 3)
        own, encoded = (None, None) if cache is None else (cache.self_attn, cache.cross_attn)
        x, own = self._attention_residual(x, self.attn, inputs.self_attn, self.attn_norm, attn_key, own)
        x, encoded = self._attention_residual(
            x, self.cross_attn, inputs.cross_attn, self.cross_norm, cross_key, encoded, inputs.memory
        )
        x = self._residual(x, self.ffn, self.ffn_norm, ffn_key)
        return x if cache is None else (x, BlockCache(own, encoded))
