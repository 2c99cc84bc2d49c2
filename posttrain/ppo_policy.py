"""The PPO policy's forward pass: per-token log-probabilities, values and logits in one pass.

The policy is posttrain/heads.py's ScalarHeadModel: the decoder plus a scalar head, which PPO uses
as its value head over the policy's own final hidden states (TRL's value-head models do the same).
One forward pass gives both; the value loss's gradient reaches the shared trunk, weighted by
ppo.vf_coef.

Everything is aligned to predicted tokens, as a language-modelling row is: `inputs` = sequence[:-1],
`targets` = sequence[1:], and column t holds the target token t's log-probability and the value of
the state before it (the hidden state at input position t).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.model.stack import LayerRunner
from scalelab.model.tower import default_positions, embed_tokens, vocab_logits
from scalelab.posttrain.heads import HEAD, base_params, head_values
from scalelab.posttrain.losses import token_logprobs

Params = dict[str, Any]


def hidden_and_logits(
    graphdef: nnx.GraphDef, decoder: Params, tokens: jax.Array, runner: LayerRunner | None = None
) -> tuple[jax.Array, jax.Array]:
    """Final hidden states (batch, length, d_model) and fp32 logits (batch, length, vocab) of a gpt decoder."""
    module = nnx.merge(graphdef, decoder)
    x = embed_tokens(module.embed, tokens, module.dtype)
    hidden = module.body(x, default_positions(tokens, None), None, None, runner)
    return hidden, vocab_logits(hidden, module.embed, module.head, module.dtype)


def policy_outputs(
    model: Any, params: Params, inputs: jax.Array, targets: jax.Array, runner: LayerRunner | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log p(targets), values, logits) of a ScalarHeadModel's `params` on rows (batch, length)."""
    hidden, logits = hidden_and_logits(model.graphdef, base_params(params), inputs, runner)
    return token_logprobs(logits, targets), head_values(hidden, params[HEAD]), logits


def reference_logprobs(graphdef: nnx.GraphDef, reference: Params, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The frozen reference decoder's log p(targets) (batch, length)."""
    return token_logprobs(hidden_and_logits(graphdef, reference, inputs)[1], targets)


def zero_head(params: Params) -> Params:
    """`params` with the value head zeroed: every value starts at 0 (a reward model's head would predict
    scores, not returns)."""
    return {**params, HEAD: jax.tree.map(jnp.zeros_like, params[HEAD])}
