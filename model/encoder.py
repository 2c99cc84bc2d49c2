"""Encoder-only model (BERT): every position sees the whole sequence.

Trained with masked language modelling, the head predicts the vocabulary at every position
(the loss weights pick the masked ones). With `model.n_classes` > 0 a classifier on the
first position's hidden state replaces it, as BERT does with its [CLS] token.
"""

from __future__ import annotations

import jax
from flax import nnx

from scalelab.model.axes import constrain
from scalelab.model.config import ModelConfig
from scalelab.model.layers import matmul, param, zeros_param
from scalelab.model.stack import Batch, LayerRunner
from scalelab.model.tower import Tower, default_positions, embed_tokens, output_head, token_table, vocab_logits


class EncoderLM(Tower):
    """Embed, N bidirectional blocks, then vocabulary logits or class logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.embed = token_table(cfg, rngs)
        super().__init__(cfg, causal=False, rngs=rngs)
        if cfg.n_classes:
            self.head = None
            self.classifier = param(rngs, (cfg.d_model, cfg.n_classes), ("embed", "classes"), cfg.init_std)
            self.classifier_bias = zeros_param((cfg.n_classes,), ("classes",))
        else:
            self.head = output_head(cfg, rngs)
            self.classifier = self.classifier_bias = None

    def forward(
        self,
        batch: Batch,
        *,
        dropout_key: jax.Array | None = None,
        runner: LayerRunner | None = None,
    ) -> jax.Array:
        """fp32 logits: (batch, length, vocab), or (batch, 1, n_classes) with a classifier."""
        tokens = batch["inputs"]
        x = embed_tokens(self.embed, tokens, self.dtype)
        positions = default_positions(tokens, batch.get("positions"))
        x = self.body(x, positions, batch.get("segment_ids"), dropout_key, runner)
        if self.classifier is None:
            return vocab_logits(x, self.embed, self.head, self.dtype)
        logits = matmul("bd,dc->bc", x[:, 0], self.classifier[...], self.dtype) + self.classifier_bias[...]
        return constrain(logits[:, None, :], ("batch", "length", "classes"))
