"""The SFT, reward-model and DPO stages (train/stage.py's Stage), registered in STAGES when this package loads.

Each is an ordinary `train()` run with its own source, loss and eval sums:
- sft: packed prompt/completion rows; next-token cross-entropy on completion tokens only (prompt
  weights are 0, so prompt positions get exactly zero gradient); eval: completion loss and
  completion token accuracy.
- reward: a gpt with a scalar head; Bradley-Terry loss over (chosen, rejected) row pairs; eval:
  pairwise accuracy and score margin.
- dpo: the policy against a frozen reference run (posttrain.reference) whose per-token
  log-probabilities the source adds to each batch (`ref_logprobs`); eval: preference accuracy and
  implicit reward margin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from scalelab.posttrain.heads import HEAD, ScalarHeadModel
from scalelab.posttrain.losses import bradley_terry, dpo, pairs, sequence_logprobs
from scalelab.posttrain.reference import ReferenceSource
from scalelab.posttrain.runs import check_init_from, load_decoder, run_stage
from scalelab.posttrain.sources import PairSource, SFTSource
from scalelab.train.stage import STAGES
from scalelab.train.steps import cross_entropy


class SFTStage:
    """Supervised fine-tuning: the pre-training loss, on completion tokens only."""

    def model(self, cfg: Any, base: Any) -> Any:
        return base

    def source(self, cfg: Any, process_index: int, process_count: int) -> Any:
        return SFTSource(cfg, process_index, process_count)

    def loss(self, cfg: Any, model: Any, runner: Any):
        def loss_fn(params, batch, key):
            logits = model.apply(params, batch, dropout_key=key, runner=runner)
            loss, ce = cross_entropy(logits, batch["targets"], batch["weights"], cfg.train.z_loss)
            return loss, {"loss": ce}

        return loss_fn

    def eval(self, cfg: Any, model: Any, runner: Any):
        def sums(params, batch):
            logits = model.apply(params, batch, runner=runner)
            weights = batch["weights"].astype(jnp.float32)
            _, ce = cross_entropy(logits, batch["targets"], weights)
            weight_sum = weights.sum()
            hits = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
            return {
                "loss_sum": ce * jnp.maximum(weight_sum, 1.0),
                "weight_sum": weight_sum,
                "accuracy_sum": (hits * weights).sum(),  # completion tokens predicted exactly (greedy)
            }

        return sums

    def init_params(self, cfg: Any, trainer: Any, init_from: Path) -> Any:
        """The decoder of `init_from`: a pre-trained, SFT, DPO or PPO run (a PPO run's value head is left behind)."""
        check_init_from(cfg.posttrain.stage, init_from)
        return load_decoder(init_from, cfg, trainer)[0]


class RewardStage(SFTStage):
    """A reward model: a scalar head on the decoder, trained with the Bradley-Terry loss on preference pairs."""

    def model(self, cfg: Any, base: Any) -> Any:
        return ScalarHeadModel.wrap(base)

    def source(self, cfg: Any, process_index: int, process_count: int) -> Any:
        return PairSource(cfg, process_index, process_count)

    def loss(self, cfg: Any, model: Any, runner: Any):
        def loss_fn(params, batch, key):
            return bradley_terry(*pairs(model.scores(params, batch, dropout_key=key, runner=runner)))

        return loss_fn

    def eval(self, cfg: Any, model: Any, runner: Any):
        def sums(params, batch):
            chosen, rejected = pairs(model.scores(params, batch, runner=runner))
            loss, metrics = bradley_terry(chosen, rejected)
            n = jnp.float32(chosen.shape[0])
            return {
                "loss_sum": loss * n,
                "weight_sum": n,
                "accuracy_sum": metrics["accuracy"] * n,
                "margin_sum": metrics["margin"] * n,
            }

        return sums

    def init_params(self, cfg: Any, trainer: Any, init_from: Path) -> Any:
        """The decoder from `init_from` (pre-trained or SFT) and a fresh head; a reward run's head is kept."""
        decoder, head = load_decoder(init_from, cfg, trainer)
        if head is not None and run_stage(init_from) == "reward":
            return {**decoder, HEAD: head}
        head_shardings = trainer.state_shardings["params"][HEAD]
        head = jax.jit(lambda: trainer.model.init_head(cfg.train.seed), out_shardings=head_shardings)()
        return {**decoder, HEAD: head}


class DPOStage(SFTStage):
    """Direct preference optimisation of the policy against a frozen reference's log-probabilities."""

    def source(self, cfg: Any, process_index: int, process_count: int) -> Any:
        return ReferenceSource(PairSource(cfg, process_index, process_count), cfg)

    def _logprobs(self, model: Any, runner: Any, params: Any, batch: Any, key: Any = None):
        logits = model.apply(params, batch, dropout_key=key, runner=runner)
        policy = pairs(sequence_logprobs(logits, batch["targets"], batch["weights"]))
        reference = pairs((batch["ref_logprobs"] * batch["weights"]).sum(axis=-1))
        return policy, reference

    def loss(self, cfg: Any, model: Any, runner: Any):
        def loss_fn(params, batch, key):
            policy, reference = self._logprobs(model, runner, params, batch, key)
            return dpo(*policy, *reference, cfg.posttrain.beta)

        return loss_fn

    def eval(self, cfg: Any, model: Any, runner: Any):
        def sums(params, batch):
            policy, reference = self._logprobs(model, runner, params, batch)
            loss, metrics = dpo(*policy, *reference, cfg.posttrain.beta)
            n = jnp.float32(policy[0].shape[0])
            return {
                "loss_sum": loss * n,
                "weight_sum": n,
                "accuracy_sum": metrics["accuracy"] * n,
                "reward_margin_sum": metrics["reward_margin"] * n,
            }

        return sums


def register() -> None:
    """Make posttrain.stage=sft, reward and dpo available to train()."""
    STAGES.update(sft=SFTStage(), reward=RewardStage(), dpo=DPOStage())
