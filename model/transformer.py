"""Model families, chosen by `model.family` through the MODEL_FAMILIES registry.

Each family maps a batch (a dict of arrays) to fp32 logits with `forward`, so the loss,
the train step and the sweeps treat every family alike.
"""

from __future__ import annotations

import jax
from flax import nnx

from scalelab.model.config import ModelConfig
from scalelab.model.encdec import EncoderDecoderLM
from scalelab.model.encoder import EncoderLM
from scalelab.model.stack import Batch, LayerRunner
from scalelab.model.tower import Tower, default_positions, embed_tokens, output_head, token_table, vocab_logits


class DecoderLM(Tower):
    """Decoder-only causal language model (GPT): embed, N causal blocks, norm, logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.embed = token_table(cfg, rngs)
        super().__init__(cfg, causal=True, rngs=rngs)
        self.head = output_head(cfg, rngs)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        runner: LayerRunner | None = None,
    ) -> jax.Array:
        """Logits (batch, length, vocab) in fp32 for int tokens (batch, length)."""
        x = self.hidden(tokens, positions=positions, segment_ids=segment_ids, dropout_key=dropout_key, runner=runner)
        return vocab_logits(x, self.embed, self.head, self.dtype)

    def hidden(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        runner: LayerRunner | None = None,
    ) -> jax.Array:
        """The final hidden states (batch, length, d_model) under the logits: what a scalar head reads."""
        x = embed_tokens(self.embed, tokens, self.dtype)
        return self.body(x, default_positions(tokens, positions), segment_ids, dropout_key, runner)

    def forward(
        self,
        batch: Batch,
        *,
        dropout_key: jax.Array | None = None,
        runner: LayerRunner | None = None,
    ) -> jax.Array:
        """Logits for a batch with `inputs` and optional `positions` and `segment_ids`."""
        return self(
            batch["inputs"],
            positions=batch.get("positions"),
            segment_ids=batch.get("segment_ids"),
            dropout_key=dropout_key,
            runner=runner,
        )


MODEL_FAMILIES: dict[str, type[nnx.Module]] = {"gpt": DecoderLM, "bert": EncoderLM, "t5": EncoderDecoderLM}


def build_model(cfg: ModelConfig, seed: int) -> nnx.Module:
    """A freshly initialised model of the family `cfg.family`."""
    return MODEL_FAMILIES[cfg.family](cfg, rngs=nnx.Rngs(params=seed))
