"""PPO's pure arithmetic: KL-shaped rewards, GAE, the clipped losses, the adaptive KL coefficient and
running reward statistics.

Every array here is aligned to predicted tokens: column t holds what belongs to the token at sequence
position t + 1 (its log-probability, the value of the state before it, its reward), and `mask` is 1
on response tokens only. Prompt and post-EOS columns carry mask 0 and contribute nothing.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over the entries where mask is 1 (0 when the mask is empty)."""
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
    """x scaled to unit variance over the masked entries (and centred unless shift_mean=False); 0 off the mask."""
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_per_token(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """The sampled-token estimate of KL(policy || reference): log pi - log pi_ref on response tokens, else 0."""
    return (logprobs - ref_logprobs) * mask


def shaped_rewards(scores: jax.Array, kl: jax.Array, mask: jax.Array, beta: float | jax.Array) -> jax.Array:
    """Per-token rewards (batch, T): -beta * KL on every response token, plus the sequence's score on its last one."""
    rewards = -beta * kl * mask
    # The last response token of a row is the last column whose mask is 1.
    columns = jnp.arange(mask.shape[1])
    last = jnp.max(jnp.where(mask > 0, columns, -1), axis=1)
    at_last = (columns[None, :] == last[:, None]) & (last[:, None] >= 0)
    return rewards + jnp.where(at_last, scores[:, None], 0.0)


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimates and returns (advantages + values), both 0 off the mask.

    A column whose successor is off the mask ends the episode: the value after it counts as 0, which
    is what a response that stopped (EOS, or the length limit) means.
    """
    next_values = jnp.concatenate([values[:, 1:] * mask[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    deltas = rewards + gamma * next_values - values

    def back(carry: jax.Array, column: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, cont = column
        advantage = delta + gamma * lam * cont * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(back, jnp.zeros(rewards.shape[0]), (deltas.T, next_mask.T), reverse=True)
    advantages = advantages.T * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, mask: jax.Array, clip: float
) -> tuple[jax.Array, jax.Array]:
    """PPO's clipped surrogate loss and the fraction of tokens whose clipped branch was taken."""
    ratio = jnp.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).astype(jnp.float32), mask)
    return loss, clip_fraction


def clipped_value_loss(
    values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array, clip: float
) -> tuple[jax.Array, jax.Array]:
    """Half the larger of the plain and clipped squared errors (values kept within `clip` of the rollout's),
    and the fraction of tokens where the clipped error was the larger."""
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    plain_error, clipped_error = jnp.square(values - returns), jnp.square(clipped - returns)
    loss = 0.5 * masked_mean(jnp.maximum(plain_error, clipped_error), mask)
    return loss, masked_mean((clipped_error > plain_error).astype(jnp.float32), mask)


def entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean entropy (nats) of the softmax of fp32 logits (batch, T, vocab) over the masked positions."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return masked_mean(-(jnp.exp(logp) * logp).sum(-1), mask)


@dataclasses.dataclass
class AdaptiveKL:
    """Ziegler et al. (2019)'s KL coefficient: beta moves toward the value that keeps the KL near `target`.

    With target None, beta stays fixed. The error is clipped to +-20% so one noisy batch cannot move
    beta far; `horizon` (in rollout samples) sets how fast it moves.
    """

    beta: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, kl: float, samples: int) -> float:
        """Beta after a batch of `samples` rollouts whose mean summed KL was `kl`."""
        if self.target is None:
            return self.beta
        error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
        self.beta *= 1.0 + error * samples / self.horizon
        return self.beta


@dataclasses.dataclass
class RunningMoments:
    """Mean and standard deviation of every score seen so far (Chan et al.'s parallel update), for scaling
    rewards to unit spread whatever the reward model's scale."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 0.0

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64)
        if values.size == 0:
            return
        batch_mean, batch_var, n = float(values.mean()), float(values.var()), values.size
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """Scores centred on the running mean and divided by the running std (1 while it is ~0)."""
        scale = self.std if self.std > 1e-6 else 1.0
        return (np.asarray(values, np.float64) - self.mean) / scale

    def to_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)
