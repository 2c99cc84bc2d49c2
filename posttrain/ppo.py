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
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalelab.model.functional import describe
from scalelab.posttrain import ppo_math as pm
from scalelab.posttrain.heads import HEAD, base_params, head_values
from scalelab.posttrain.losses import token_logprobs
from scalelab.posttrain.ppo_policy import hidden_and_logits, policy_outputs, reference_logprobs
from scalelab.posttrain.rollout import join, sample
from scalelab.train.faults import NonFiniteLossError
from scalelab.train.stage import PPOConfig

Params = dict[str, Any]
# (tokens (batch, length), response mask (batch, length)) -> a score per sequence (batch,)
Scorer = Callable[[jax.Array, jax.Array], Any]


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


@functools.cache
def shared_graphdef(cfg: Any) -> Any:
    """One graphdef per model config. jit caches key on the graphdef, and describe() makes a new, unequal one
    on every call, so without this each run (and each resumed session) would compile its programs again."""
    return describe(cfg).graphdef


def make_tx(lr: float, clip_norm: float | None, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam(W) with optional global-norm clipping: fine-tuning from SFT wants no schedule tricks."""
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    return optax.chain(*parts, optax.adamw(lr, weight_decay=weight_decay))


def ppo_loss(model: Any, settings: PPOConfig, runner: Any = None) -> Callable:
    """loss(params, minibatch, dropout key) -> (clipped policy loss + vf_coef * clipped value loss, metrics)."""
    s = settings

    def loss_fn(params, mb, key):
        del key  # PPO's ratios compare like with like: no dropout in either pass
        logprobs, values, logits = policy_outputs(model, params, mb["inputs"], mb["targets"], runner)
        pg_loss, clip_fraction = pm.clipped_policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"], s.clip)
        vf_loss, vf_clipped = pm.clipped_value_loss(values, mb["values"], mb["returns"], mb["mask"], s.value_clip)
        loss = pg_loss + s.vf_coef * vf_loss
        return loss, {
            "loss": loss,
            "policy_loss": pg_loss,
            "value_loss": vf_loss,
            "clip_fraction": clip_fraction,
            "value_clip_fraction": vf_clipped,
            "entropy": pm.entropy(logits, mb["mask"]),
            "approx_kl": 0.5 * pm.masked_mean(jnp.square(logprobs - mb["logprobs"]), mb["mask"]),
        }

    return loss_fn


def standalone_update(model: Any, settings: PPOConfig, tx: optax.GradientTransformation) -> Callable:
    """A jitted update(state, minibatch) -> (state, metrics) on whatever device holds the state: the
    Trainer's train_step with the PPO loss, for use without a run directory (tests, notebooks)."""
    loss_fn = ppo_loss(model, settings)

    def update(state, mb):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], mb, None)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.tree.norm(grads)
        metrics = {**metrics, "grad_norm": grad_norm, "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return jax.jit(update, donate_argnums=0)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def experience(graphdef, settings: PPOConfig, params, reference, tokens, response_mask, scores, beta):
    """A rollout batch as PPO trains on it: the policy's log-probs and values at sampling time, the reference's
    log-probs, KL-shaped rewards, advantages and returns, as rows of inputs/targets; and the batch's mean
    summed KL and KL reward."""
    s = settings
    inputs, targets, mask = tokens[:, :-1], tokens[:, 1:], response_mask[:, 1:]
    hidden, logits = hidden_and_logits(graphdef, base_params(params), inputs)
    logprobs, values = token_logprobs(logits, targets), head_values(hidden, params[HEAD])
    ref_logprobs = reference_logprobs(graphdef, reference, inputs, targets)
    kl = pm.kl_per_token(logprobs, ref_logprobs, mask)
    rewards = pm.shaped_rewards(scores, kl, mask, beta)
    advantages, returns = pm.gae(rewards, values * mask, mask, s.gamma, s.lam)
    if s.whiten_advantages:
        advantages = pm.whiten(advantages, mask)
    batch = {
        "inputs": inputs,
        "targets": targets,
        "mask": mask,
        "logprobs": logprobs * mask,
        "values": values * mask,
        "advantages": advantages,
        "returns": returns,
    }
    return batch, {"kl": kl.sum(1).mean(), "non_score_reward": (rewards.sum(1) - scores).mean()}


class PPOLearner:
    """The PPO step for one policy (a ScalarHeadModel: decoder + value head), its frozen reference and a scorer.

    `update(state, minibatch) -> (state, metrics)` is one optimizer step on the PPO loss: the run's
    Trainer.train_step (sharded on its mesh), or `standalone_update`. `put_batch` places a host
    minibatch on the mesh's batch axes. The state's step counts optimizer updates; PPO steps are
    counted by the caller and passed in, since every draw of a PPO step is keyed by it.
    """

    def __init__(
        self,
        model: Any,
        settings: PPOConfig,
        update: Callable,
        reference: Params,
        scorer: Scorer,
        *,
        beta: float,
        eos_id: int | None,
        seed: int,
        put_batch: Callable[[Any], Any] | None = None,
    ):
        self.model, self.settings, self.update = model, settings, update
        self.reference, self.scorer, self.eos_id, self.seed = reference, scorer, eos_id, seed
        self.put_batch = put_batch or (lambda batch: batch)
        self.host = HostState(pm.AdaptiveKL(beta, settings.target_kl, settings.kl_horizon), pm.RunningMoments())

    def rollout(self, params: Params, prompts: np.ndarray, lengths: np.ndarray, step: int):
        """Sampled responses for PPO step `step`'s prompts: (joined tokens, response mask, the Rollout)."""
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        prompts, lengths = jnp.asarray(prompts, jnp.int32), jnp.asarray(lengths, jnp.int32)
        out = sample(
            self.model.cfg,
            shared_graphdef(self.model.cfg),
            base_params(params),
            prompts,
            lengths,
            new_tokens=self.settings.new_tokens,
            key=key,
            eos_id=self.eos_id,
            temperature=self.settings.temperature,
        )
        tokens, response_mask = join(prompts, lengths, out.tokens, out.mask)
        return tokens, response_mask, out

    def step(self, state: dict[str, Any], prompts: np.ndarray, lengths: np.ndarray, step: int) -> tuple[dict, dict]:
        """PPO step `step` on a batch of right-padded prompts: the new state and the step's metrics."""
        s = self.settings
        start = time.perf_counter()
        tokens, response_mask, out = self.rollout(state["params"], prompts, lengths, step)
        jax.block_until_ready(tokens)
        rollout_s = time.perf_counter() - start
        response_tokens = float(out.mask.sum())
        raw = np.asarray(jax.device_get(self.scorer(tokens, response_mask)), np.float64)
        scores = raw
        if s.normalize_rewards:
            self.host.moments.update(raw)
            scores = self.host.moments.normalize(raw)
        beta = self.host.kl.beta
        scores = jnp.asarray(scores, jnp.float32)
        batch, stats = experience(
            shared_graphdef(self.model.cfg), s, state["params"], self.reference, tokens, response_mask, scores, beta
        )
        batch = jax.device_get(batch)
        rows = prompts.shape[0]
        per_update = rows // s.minibatches
        order_key = jax.random.fold_in(jax.random.key(self.seed ^ 0x9907), step)
        sums: dict[str, float] = {}
        for epoch in range(s.epochs):
            order = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, epoch), rows))
            for i in range(s.minibatches):
                rows_i = np.sort(order[i * per_update : (i + 1) * per_update])
                state, metrics = self.update(state, self.put_batch({k: v[rows_i] for k, v in batch.items()}))
                for name, value in jax.device_get(metrics).items():
                    sums[name] = sums.get(name, 0.0) + float(value)
        updates = s.epochs * s.minibatches
        if sums.get("finite", updates) < updates:
            raise NonFiniteLossError(
                f"PPO step {step}: a non-finite loss or gradient; lower optimizer.lr or set optimizer.clip_norm"
            )
        kl = float(stats["kl"])
        self.host.kl.update(kl, rows)
        seconds = time.perf_counter() - start
        metrics = {name: value / updates for name, value in sums.items() if name not in ("finite", "total_loss")}
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
