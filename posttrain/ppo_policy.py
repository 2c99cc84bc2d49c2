"""The PPO policy's forward pass: per-token log-probabilities, entropies and values of whole sequences.

The value head is a linear map from the policy's final hidden states to a scalar, sharing the trunk
with the policy (as TRL's value-head models do): one forward pass gives both, and the value loss's
gradient shapes the shared trunk, weighted by ppo.vf_coef. It starts at zero, so the first values are
0 and the first value errors are exactly the returns.

Outputs are aligned to predicted tokens: column t belongs to the token at position t + 1, predicted
from the hidden state at position t (so its value is the value of the state before that token).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.model.functional import ModelDef
from scalelab.model.tower import default_positions, embed_tokens, vocab_logits

Params = dict[str, Any]


def init_value_head(d_model: int) -> Params:
    """A zero linear head (d_model -> 1): every value starts at 0."""
    return {"w": jnp.zeros((d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def hidden_and_logits(model: ModelDef, params: Params, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Final hidden states (batch, length, d_model) and fp32 logits (batch, length, vocab) of a gpt model."""
    module = nnx.merge(model.graphdef, params)
    x = embed_tokens(module.embed, tokens, module.dtype)
    hidden = module.body(x, default_positions(tokens, None), None, None, None)
    return hidden, vocab_logits(hidden, module.embed, module.head, module.dtype)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log p(tokens[:, t+1] | prefix) from logits (batch, length, vocab): (batch, length - 1), fp32."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def values(head: Params, hidden: jax.Array) -> jax.Array:
    """The value head on hidden states (batch, length, d_model) -> (batch, length - 1), fp32."""
    return hidden[:, :-1].astype(jnp.float32) @ head["w"] + head["b"]


def policy_outputs(
    model: ModelDef, params: Params, head: Params, tokens: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log-probabilities, values, logits of the predicting positions) for sequences (batch, length)."""
    hidden, logits = hidden_and_logits(model, params, tokens)
    return token_logprobs(logits, tokens), values(head, hidden), logits[:, :-1]


def reference_logprobs(model: ModelDef, params: Params, tokens: jax.Array) -> jax.Array:
    """The frozen reference's per-token log-probabilities (batch, length - 1)."""
    return token_logprobs(model.apply(params, {"inputs": tokens}), tokens)
