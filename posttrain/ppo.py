"""PPO (RLHF): one step samples responses to a batch of prompts, scores them, turns the scores into
KL-penalised per-token rewards and advantages (GAE), then runs several epochs of clipped policy and
value updates over minibatches of that batch.

The pieces: rollouts from the KV-cache decoder (rollout.py), the policy's forward pass with its value
head (ppo_policy.py), the arithmetic (ppo_math.py). A scorer gives each sampled sequence its reward:
the reward model's score in RLHF, or any program (tests use the count of one token). This module
holds the step; ppo_run.py drives it in a run directory with checkpoints, metrics and resume.

Determinism: every draw of step s (its sampling key and its minibatch order) is keyed by (seed, s),
and the host-side state (the KL coefficient and the running reward statistics) travels in the
checkpoint, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalelab.errors import ConfigError
from scalelab.model.functional import ModelDef
from scalelab.posttrain import ppo_math as pm
from scalelab.posttrain.ppo_policy import init_value_head, policy_outputs, reference_logprobs
from scalelab.posttrain.rollout import join, sample

Params = dict[str, Any]
# (tokens (batch, length), response mask (batch, length)) -> a score per sequence (batch,)
Scorer = Callable[[jax.Array, jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class PPOSettings:
    """PPO's knobs; the defaults follow TRL's sentiment example, scaled to small batches."""

    new_tokens: int = 24  # longest response, in tokens
    temperature: float = 1.0  # rollout sampling temperature (1: the policy's own distribution)
    epochs: int = 4  # passes over each rollout batch
    minibatches: int = 2  # gradient steps per pass
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # how far a value may move from the rollout's before its error is clipped
    vf_coef: float = 0.1  # weight of the value loss against the policy loss (they share the trunk)
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    beta: float = 0.05  # KL penalty coefficient (the start value when target_kl is set)
    target_kl: float | None = None  # adaptive beta (Ziegler et al. 2019): the summed KL per response to aim for
    kl_horizon: int = 10_000  # adaptive beta: samples over which a 20% error moves beta by 20%
    normalize_rewards: bool = True  # scale scores by running mean and std before adding the KL penalty
    whiten_advantages: bool = True

    def __post_init__(self) -> None:
        positive = {"new_tokens": self.new_tokens, "epochs": self.epochs, "minibatches": self.minibatches}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"ppo.{name} must be at least 1, got {value}")
        if self.temperature <= 0:
            raise ConfigError(f"ppo.temperature must be > 0 (PPO samples from the policy), got {self.temperature}")
        if self.beta < 0:
            raise ConfigError(f"ppo.beta must be >= 0, got {self.beta}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ConfigError(f"ppo.target_kl must be positive (or null for a fixed beta), got {self.target_kl}")
        for name in ("clip", "value_clip"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ppo.{name} must be positive, got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"ppo.{name} must be in (0, 1], got {getattr(self, name)}")


@dataclasses.dataclass
class HostState:
    """What PPO keeps outside the arrays: the KL coefficient and the running reward statistics."""

    kl: pm.AdaptiveKL
    moments: pm.RunningMoments

    def to_json(self) -> dict[str, Any]:
        return {"beta": self.kl.beta, "moments": self.moments.to_json()}

    def load(self, data: dict[str, Any]) -> None:
        self.kl.beta = float(data["beta"])
        self.moments = pm.RunningMoments(**data["moments"])


def make_tx(lr: float, clip_norm: float | None, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam(W) with optional global-norm clipping: fine-tuning from SFT wants no schedule tricks."""
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    return optax.chain(*parts, optax.adamw(lr, weight_decay=weight_decay))


class PPOLearner:
    """The PPO step for one policy model, its frozen reference and a scorer."""

    def __init__(
        self,
        model: ModelDef,
        settings: PPOSettings,
        tx: optax.GradientTransformation,
        reference: Params,
        scorer: Scorer,
        *,
        eos_id: int | None,
        seed: int,
        put_batch: Callable[[Any], Any] | None = None,
    ):
        self.model, self.settings, self.tx = model, settings, tx
        self.reference, self.scorer, self.eos_id, self.seed = reference, scorer, eos_id, seed
        self.put_batch = put_batch or (lambda x: x)  # places a host batch on the mesh's batch axes
        self.host = HostState(
            pm.AdaptiveKL(settings.beta, settings.target_kl, settings.kl_horizon), pm.RunningMoments()
        )
        self._experience = jax.jit(self._experience_fn)
        self._update = jax.jit(self._update_fn, donate_argnums=(0,))

    def init_state(self, policy: Params) -> dict[str, Any]:
        """Step 0: the policy's parameters, a zero value head and a fresh optimizer state."""
        # A copy: the update donates its state, and the reference may share these buffers.
        params = {"policy": jax.tree.map(jnp.copy, policy), "value_head": init_value_head(self.model.cfg.d_model)}
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}

    def _experience_fn(self, params, reference, tokens, response_mask, scores, beta):
        """Old log-probs and values, the reference's log-probs, KL, rewards, advantages and returns."""
        s = self.settings
        logprobs, values, _ = policy_outputs(self.model, params["policy"], params["value_head"], tokens)
        ref_logprobs = reference_logprobs(self.model, reference, tokens)
        mask = response_mask[:, 1:]
        kl = pm.kl_per_token(logprobs, ref_logprobs, mask)
        rewards = pm.shaped_rewards(scores, kl, mask, beta)
        advantages, returns = pm.gae(rewards, values * mask, mask, s.gamma, s.lam)
        if s.whiten_advantages:
            advantages = pm.whiten(advantages, mask)
        return {
            "tokens": tokens,
            "mask": mask,
            "logprobs": logprobs,
            "values": values * mask,
            "advantages": advantages,
            "returns": returns,
        }, {"kl": kl.sum(1).mean(), "non_score_reward": (rewards.sum(1) - scores).mean()}

    def _loss(self, params, mb):
        s = self.settings
        logprobs, values, logits = policy_outputs(self.model, params["policy"], params["value_head"], mb["tokens"])
        pg_loss, clip_fraction = pm.clipped_policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"], s.clip)
        vf_loss, vf_clip_fraction = pm.clipped_value_loss(values, mb["values"], mb["returns"], mb["mask"], s.value_clip)
        approx_kl = 0.5 * pm.masked_mean(jnp.square(logprobs - mb["logprobs"]), mb["mask"])
        metrics = {
            "policy_loss": pg_loss,
            "value_loss": vf_loss,
            "clip_fraction": clip_fraction,
            "value_clip_fraction": vf_clip_fraction,
            "entropy": pm.entropy(logits, mb["mask"]),
            "approx_kl": approx_kl,
        }
        return pg_loss + s.vf_coef * vf_loss, metrics

    def _update_fn(self, state, mb):
        (loss, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(state["params"], mb)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return {"step": state["step"], "params": params, "opt_state": opt_state}, metrics

    def rollout(self, params: Params, prompts: np.ndarray, lengths: np.ndarray, step: int):
        """Sampled responses for `step`'s prompts: (joined tokens, response mask, the Rollout)."""
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        out = sample(
            self.model.cfg,
            self.model.graphdef,
            params["policy"],
            jnp.asarray(prompts),
            jnp.asarray(lengths),
            new_tokens=self.settings.new_tokens,
            key=key,
            eos_id=self.eos_id,
            temperature=self.settings.temperature,
        )
        tokens, response_mask = join(jnp.asarray(prompts), jnp.asarray(lengths), out.tokens, out.mask)
        return tokens, response_mask, out

    def step(self, state: dict[str, Any], prompts: np.ndarray, lengths: np.ndarray) -> tuple[dict, dict[str, float]]:
        """One PPO step on a batch of right-padded prompts; returns the new state and the step's metrics."""
        s, step = self.settings, int(state["step"])
        start = time.perf_counter()
        tokens, response_mask, out = self.rollout(state["params"], prompts, lengths, step)
        response_tokens = float(out.mask.sum())
        jax.block_until_ready(tokens)
        rollout_s = time.perf_counter() - start
        raw = np.asarray(jax.device_get(self.scorer(tokens, response_mask)), np.float64)
        scores = raw
        if s.normalize_rewards:
            self.host.moments.update(raw)
            scores = self.host.moments.normalize(raw)
        beta = self.host.kl.beta
        batch, stats = self._experience(
            state["params"], self.reference, tokens, response_mask, jnp.asarray(scores, jnp.float32), beta
        )
        rows = prompts.shape[0]
        per_mb = rows // s.minibatches
        order_key = jax.random.fold_in(jax.random.key(self.seed + 1), step)
        sums: dict[str, float] = {}
        for epoch in range(s.epochs):
            order = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, epoch), rows))
            for i in range(s.minibatches):
                idx = np.sort(order[i * per_mb : (i + 1) * per_mb])
                mb = self.put_batch({k: v[idx] for k, v in batch.items()})
                state, metrics = self._update(state, mb)
                for name, value in metrics.items():
                    sums[name] = sums.get(name, 0.0) + float(value)
        updates = s.epochs * s.minibatches
        kl = float(stats["kl"])
        self.host.kl.update(kl, rows)
        state = {**state, "step": state["step"] + 1}
        seconds = time.perf_counter() - start
        metrics = {name: value / updates for name, value in sums.items()}
        metrics.update(
            reward=float(raw.mean()),
            reward_std=float(raw.std()),
            kl=kl,
            beta=beta,
            non_score_reward=float(stats["non_score_reward"]),
            response_length=response_tokens / rows,
            rollout_tokens_per_s=response_tokens / max(rollout_s, 1e-9),
            tokens_per_s=float(tokens.size) / max(seconds, 1e-9),
            step_time_s=seconds,
        )
        return state, metrics


def count_token_scorer(token: int) -> Scorer:
    """A toy reward: how many times `token` appears in each response."""

    @jax.jit
    def score(tokens: jax.Array, response_mask: jax.Array) -> jax.Array:
        return ((tokens == token) * response_mask).sum(axis=1)

    return score
