"""Model families, chosen by `model.family` through the MODEL_FAMILIES registry.

Each family maps a batch (a dict of arrays) to fp32 logits with `forward`, so the loss,
the train step and the sweeps treat every family alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from model.axes import constrain
from model.config import ModelConfig
from model.layers import AttentionInputs, DecoderBlock, dropout, make_norm, matmul, param
from model.positions import POSITION_ENCODINGS
from model.stack import LayerRunner, LayerStack


def causal_mask(length: int, segment_ids: jax.Array | None = None) -> jax.Array:
    """Boolean mask (batch or 1, 1, 1, q, k): each position sees itself and earlier ones of its segment."""
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None, None]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask = mask & same[:, None, None]
    return mask


class DecoderLM(nnx.Module):
    """Decoder-only causal language model (GPT): embed, N pre-norm blocks, norm, logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = jnp.dtype(cfg.dtype)
        self.embed = param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std)
        self.positions = POSITION_ENCODINGS[cfg.position](cfg, rngs=rngs)
        self.layers = LayerStack(cfg, DecoderBlock, rngs=rngs)
        self.final_norm = make_norm(cfg, rngs)
        self.head = (
            None if cfg.tie_embeddings else param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std)
        )

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
        _, length = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
        embed_key, layers_key = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        x = self.embed[...].astype(self.dtype)[tokens]
        x = self.positions.embed(x, positions)
        x = constrain(dropout(x, self.cfg.dropout, embed_key), ("batch", "length", "embed"))
        inputs = AttentionInputs(mask=causal_mask(length, segment_ids), rotary=self.positions.rotary(positions))
        x = self.layers(x, inputs, layers_key, runner)
        x = self.final_norm(x)
        if self.head is None:
            logits = matmul("btd,vd->btv", x, self.embed[...], self.dtype)
        else:
            logits = matmul("btd,dv->btv", x, self.head[...], self.dtype)
        return constrain(logits, ("batch", "length", "vocab"))

    def forward(
        self,
        batch: Mapping[str, jax.Array],
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


MODEL_FAMILIES: dict[str, type[nnx.Module]] = {"gpt": DecoderLM}


def build_model(cfg: ModelConfig, seed: int) -> nnx.Module:
    """A freshly initialised model of the family `cfg.family`."""
    if cfg.family not in MODEL_FAMILIES:
        raise NotImplementedError(f"model.family={cfg.family!r} is not built yet; available: {sorted(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[cfg.family](cfg, rngs=nnx.Rngs(params=seed))
