"""Encoder-decoder model (T5): a bidirectional encoder reads the inputs; a causal decoder,
whose blocks also attend to the encoder output, predicts the targets.

A batch carries `inputs` (and optionally `positions` and `segment_ids`, 0 marking padding)
for the encoder, and `decoder_inputs` (the targets shifted right, with optional
`decoder_segment_ids`) for the decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.model.config import ModelConfig
from scalelab.model.stack import Batch, LayerRunner
from scalelab.model.tower import Tower, default_positions, embed_tokens, output_head, token_table, vocab_logits


class EncoderDecoderLM(nnx.Module):
    """Token embeddings (shared or one table per stack), encoder and decoder towers, logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dtype = jnp.dtype(cfg.dtype)
        self.embed = token_table(cfg, rngs)
        self.decoder_embed = None if cfg.tie_encoder_decoder_embeddings else token_table(cfg, rngs)
        self.encoder = Tower(cfg, causal=False, rngs=rngs, n_layers=cfg.encoder_layers, readout=False)
        self.decoder = Tower(cfg, causal=True, rngs=rngs, cross=True, n_layers=cfg.decoder_layers)
        self.head = output_head(cfg, rngs)

    def forward(
        self,
        batch: Batch,
        *,
        dropout_key: jax.Array | None = None,
        runner: LayerRunner | None = None,
    ) -> jax.Array:
        """fp32 logits (batch, decoder length, vocab) of the targets."""
        encoder_key, decoder_key = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        tokens, segments = batch["inputs"], batch.get("segment_ids")
        x = embed_tokens(self.embed, tokens, self.dtype)
        memory = self.encoder.body(x, default_positions(tokens, batch.get("positions")), segments, encoder_key, runner)
        decoder_tokens = batch["decoder_inputs"]
        table = self.embed if self.decoder_embed is None else self.decoder_embed
        y = embed_tokens(table, decoder_tokens, self.dtype)
        y = self.decoder.body(
            y,
            default_positions(decoder_tokens, None),
            batch.get("decoder_segment_ids"),
            decoder_key,
            runner,
            memory=memory,
            memory_segments=segments,
        )
        return vocab_logits(y, table, self.head, self.dtype)
