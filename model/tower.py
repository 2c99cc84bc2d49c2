"""The body every family shares: positions, a stack of blocks and the norms around it.

A Tower maps embedded tokens to hidden states. GPT and BERT are towers with token
embeddings and an output head; T5 holds two (a bidirectional encoder and a causal
decoder whose blocks also attend to the encoder output). Given a cache, a causal tower
decodes: new tokens attend to the earlier ones' keys and values (model/cache.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.model.attention import CrossInputs, cross_attention_inputs, self_attention_inputs
from scalelab.model.axes import constrain
from scalelab.model.blocks import NORM_PLACEMENTS, Block, CrossBlock
from scalelab.model.cache import BlockCache, KeyValues, cached_self_attention_inputs
from scalelab.model.config import ModelConfig
from scalelab.model.layers import dropout, make_norm, matmul, param
from scalelab.model.masks import make_pattern
from scalelab.model.mup import readout_multiplier
from scalelab.model.positions import POSITION_ENCODINGS
from scalelab.model.stack import CachedRunner, LayerRunner, LayerStack


def default_positions(tokens: jax.Array, positions: jax.Array | None) -> jax.Array:
    """`positions` if given, else 0..length-1 for every row."""
    if positions is not None:
        return positions
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def token_table(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Param:
    """A token embedding table (vocab, d_model)."""
    return param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std)


def embed_tokens(table: nnx.Param, tokens: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Rows of the token table (vocab, d_model) for int tokens (batch, length), in `dtype`."""
    # Gather from a table whole along d_model. From one split over FSDP, XLA cannot reach the
    # batch-split activations except by replicating the gathered rows first (its "involuntary full
    # rematerialization"); all-gathering the table is what FSDP does for every weight anyway.
    rows = constrain(table[...].astype(dtype), ("vocab", None))
    return constrain(rows[tokens], ("batch", "length", "embed"))


def output_head(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Param | None:
    """An untied logits projection (d_model, vocab), or None when the logits reuse the embeddings."""
    return None if cfg.tie_embeddings else param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std)


def vocab_logits(x: jax.Array, table: nnx.Param, head: nnx.Param | None, dtype: jnp.dtype) -> jax.Array:
    """fp32 logits (batch, length, vocab): through the untied head, else the embedding table."""
    if head is None:
        logits = matmul("btd,vd->btv", x, table[...], dtype)
    else:
        logits = matmul("btd,dv->btv", x, head[...], dtype)
    return constrain(logits, ("batch", "length", "vocab"))


class Tower(nnx.Module):
    """Position encoding, a stack of blocks and the norms its placement needs, over embedded tokens."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        causal: bool,
        rngs: nnx.Rngs,
        cross: bool = False,
        n_layers: int | None = None,
        readout: bool = True,
    ):
        """`readout`: a head reads this tower's output (False for a t5 encoder, whose output is the decoder's memory)."""
        self.cfg = cfg
        self.dtype = jnp.dtype(cfg.dtype)
        self.causal = causal
        self.pattern = make_pattern(cfg, causal)
        placement = NORM_PLACEMENTS[cfg.norm_position]
        self.positions = POSITION_ENCODINGS[cfg.position](cfg, rngs=rngs)
        self.embed_norm = make_norm(cfg, rngs) if placement.norm_embeddings else None
        self.layers = LayerStack(cfg, CrossBlock if cross else Block, rngs=rngs, n_layers=n_layers)
        self.final_norm = make_norm(cfg, rngs) if placement.norm_output else None
        # µP's readout multiplier (1.0 under standard), applied to the states every head reads: the
        # logits, tied or not, a classifier and a scalar head are all linear in them.
        self.output_multiplier = readout_multiplier(cfg) if readout else 1.0

    def body(
        self,
        x: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array | None,
        dropout_key: jax.Array | None,
        runner: LayerRunner | CachedRunner | None,
        memory: jax.Array | None = None,
        memory_segments: jax.Array | None = None,
        cache: BlockCache | None = None,
    ) -> jax.Array | tuple[jax.Array, BlockCache]:
        """Hidden states (batch, length, d_model) of embedded tokens x; blocks attend to `memory` if given.

        Decoding passes the stacked `cache` and x's `positions`, and gets (hidden states, the updated
        cache). A t5 decoder's cache holds the encoder output's keys and values (`memory_keys_values`)
        in place of `memory`, and `memory_segments` still marks its padding as 0. A readout tower's
        states carry µP's output multiplier (model/mup.py), so every head reading them is scaled alike.
        """
        embed_key, layers_key = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        x = self.positions.embed(x, positions)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = constrain(dropout(x, self.cfg.dropout, embed_key), ("batch", "length", "embed"))
        bias_fn = functools.partial(self.positions.attention_bias, bidirectional=not self.causal)
        rotary = self.positions.rotary(positions)
        if cache is None:
            inputs = self_attention_inputs(self.pattern, x.shape[1], segment_ids, rotary, bias_fn)
        else:
            inputs = cached_self_attention_inputs(self.pattern, positions, cache.self_attn.slots, rotary, bias_fn)
        if memory is not None or (cache is not None and cache.cross_attn is not None):
            inputs = CrossInputs(inputs, cross_attention_inputs(segment_ids, memory_segments), memory)
        if cache is None:
            x = self.layers(x, inputs, layers_key, runner)
        else:
            x, cache = self.layers(x, inputs, layers_key, runner, cache)
        x = x if self.final_norm is None else self.final_norm(x)
        if self.output_multiplier != 1.0:
            x = (x.astype(jnp.float32) * self.output_multiplier).astype(x.dtype)
        return x if cache is None else (x, cache)

    def memory_keys_values(self, memory: jax.Array) -> KeyValues:
        """Decoding: each cross-attention layer's keys and values of the encoder output `memory`, stacked over
        layers, for the cache."""
        graphdef, state = nnx.split(self.layers.blocks)

        def project(_: None, weights: nnx.State) -> tuple[None, KeyValues]:
            return None, nnx.merge(graphdef, weights).cross_attn.keys_values(memory)

        return jax.lax.scan(project, None, state)[1]
