"""The post-training losses as pure functions of arrays: per-token log-probabilities, Bradley-Terry and DPO.

Preference batches hold pairs in consecutive rows (chosen, rejected), so `pairs` splits any
per-row array into its chosen and rejected halves. Everything is computed in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """fp32 (batch, length) log p(target | inputs so far) from logits (batch, length, vocab)."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - log_z


def sequence_logprobs(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """fp32 (batch,) log-probability of each row's weighted targets (its completion): sum of token log-probs."""
    return (token_logprobs(logits, targets) * weights.astype(jnp.float32)).sum(axis=-1)


def pairs(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(chosen, rejected) halves of a per-row array whose rows alternate chosen, rejected."""
    grouped = values.reshape(values.shape[0] // 2, 2, *values.shape[1:])
    return grouped[:, 0], grouped[:, 1]


def bradley_terry(chosen: jax.Array, rejected: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean -log sigmoid(r_chosen - r_rejected) over pairs, with pairwise accuracy and the mean score margin."""
    margin = chosen.astype(jnp.float32) - rejected.astype(jnp.float32)
    loss = -jax.nn.log_sigmoid(margin).mean()
    return loss, {"loss": loss, "accuracy": (margin > 0).mean(), "margin": margin.mean()}


def dpo(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    reference_chosen: jax.Array,
    reference_rejected: jax.Array,
    beta: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DPO: mean -log sigmoid(beta * margin), margin = (log pi/ref of chosen) - (log pi/ref of rejected).

    Reports preference accuracy (margin > 0) and the implicit reward margin beta * margin, as
    TRL's rewards/accuracies and rewards/margins.
    """
    reward_chosen = beta * (policy_chosen - reference_chosen)
    reward_rejected = beta * (policy_rejected - reference_rejected)
    margin = reward_chosen - reward_rejected
    loss = -jax.nn.log_sigmoid(margin).mean()
    return loss, {
        "loss": loss,
        "accuracy": (margin > 0).mean(),
        "reward_margin": margin.mean(),
        "reward_chosen": reward_chosen.mean(),
        "reward_rejected": reward_rejected.mean(),
    }
