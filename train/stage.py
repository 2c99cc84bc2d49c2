"""Training stages: pre-training (the default) and the post-training stages that scalelab.posttrain registers.

A stage changes what `train()` trains without a second loop: it may replace the batch source,
wrap the model (e.g. add a scalar head), replace the loss and the eval sums, and say how a
new run's parameters come from `--init-from`. Everything else (meshes, checkpoints, resume,
metrics, TensorBoard, the NaN policy) is the ordinary run's. The stage is named by the config
key `posttrain.stage`, so a run directory's config.yaml says which stage it trains and a
re-run resumes it. The stages themselves live in scalelab.posttrain (above train/), which
fills STAGES when it is imported; the scalelab CLI imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from scalelab.errors import ConfigError

STAGE_NAMES = ("pretrain", "sft", "reward", "dpo", "ppo")
OVERFLOW_POLICIES = ("refuse", "truncate")

# (params, batch, dropout key or None) -> (loss to optimise, {metric name: scalar}); the metrics
# must include "loss" (what metrics.jsonl reports as the step's loss).
LossFn = Callable[[Any, Any, Any], tuple[Any, dict[str, Any]]]
# (params, batch) -> {"loss_sum", "weight_sum", and any "<name>_sum"}: sums, so eval batches combine exactly;
# each extra "<name>_sum" is reported as eval_<name> = <name>_sum / weight_sum.
EvalFn = Callable[[Any, Any], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO's settings (section posttrain.ppo; its KL coefficient and reference are posttrain.beta and .reference).

    train.batch_size counts the rows of one minibatch update; a PPO step samples batch_size x minibatches
    prompts. train.seq_len holds prompt and response: prompts get seq_len - new_tokens tokens.
    """

    reward_model: str | None = None  # run directory of a reward-model run (scalelab reward) that scores responses
    new_tokens: int = 24  # longest response, in tokens
    temperature: float = 1.0  # rollout sampling temperature (1: the policy's own distribution)
    epochs: int = 4  # passes over each rollout batch
    minibatches: int = 2  # optimizer updates per pass
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # how far a value may move from the rollout's before its error is clipped
    vf_coef: float = 0.1  # weight of the value loss against the policy loss (they share the trunk)
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    target_kl: float | None = None  # adaptive beta (Ziegler et al. 2019): the summed KL per response to aim for
    kl_horizon: int = 10_000  # adaptive beta: samples over which a 20% KL error moves beta by 20%
    normalize_rewards: bool = True  # centre and scale scores by their running mean and std
    whiten_advantages: bool = True  # scale advantages to zero mean and unit variance over each batch's response tokens

    def __post_init__(self) -> None:
        for name in ("new_tokens", "epochs", "minibatches", "kl_horizon"):
            if getattr(self, name) < 1:
                raise ConfigError(f"posttrain.ppo.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("temperature", "clip", "value_clip"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"posttrain.ppo.{name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"posttrain.ppo.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ConfigError(
                f"posttrain.ppo.target_kl must be positive (or null for a fixed beta), got {self.target_kl}"
            )


@dataclasses.dataclass(frozen=True)
class PostTrainConfig:
    """Post-training: which stage this run trains, its data files and the settings of its loss."""

    stage: str = "pretrain"  # pretrain, sft, reward, dpo (scalelab.posttrain) or ppo
    train_file: str | None = (
        None  # sft: {prompt, completion} or {messages} JSONL; reward, dpo: {prompt, chosen, rejected}
    )
    eval_file: str | None = None  # held-out examples in the same format; null: hold out eval_fraction of train_file
    eval_fraction: float = 0.1  # share of train_file's lines (chosen by content hash) held out when eval_file is null
    overflow: str = "refuse"  # an example longer than train.seq_len: refuse (error naming its line) or truncate
    reference: str | None = None  # dpo, ppo: the frozen reference run directory (usually the SFT run)
    beta: float = 0.1  # dpo: strength of the implicit KL penalty; ppo: the KL coefficient (start value if adaptive)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)

    @property
    def command(self) -> str:
        """The `scalelab COMMAND` that trains this stage (each post-training stage has its own)."""
        return "train" if self.stage == "pretrain" else self.stage

    def __post_init__(self) -> None:
        if self.stage not in STAGE_NAMES:
            raise ConfigError(f"posttrain.stage: unknown value {self.stage!r}; choose one of {', '.join(STAGE_NAMES)}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ConfigError(
                f"posttrain.overflow: unknown value {self.overflow!r}; choose one of {', '.join(OVERFLOW_POLICIES)}"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"posttrain.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.beta <= 0:
            raise ConfigError(f"posttrain.beta must be positive, got {self.beta}")


class Stage(Protocol):
    """What a post-training stage supplies to the ordinary training run."""

    def model(self, cfg: Any, base: Any) -> Any:
        """The ModelDef to train: `base` (describe(cfg.model)) or a wrapper with the same interface."""
        ...

    def source(self, cfg: Any, process_index: int, process_count: int) -> Any:
        """The step-indexed batch source (data.BatchSource) of this process's rows."""
        ...

    def loss(self, cfg: Any, model: Any, runner: Any) -> LossFn:
        """The training loss over one (micro)batch."""
        ...

    def eval(self, cfg: Any, model: Any, runner: Any) -> EvalFn:
        """The eval sums of one batch."""
        ...

    def init_params(self, cfg: Any, trainer: Any, init_from: Path) -> Any:
        """A new run's parameters (on trainer's shardings) from the run or checkpoint `init_from`."""
        ...


STAGES: dict[str, Stage] = {}


def stage_of(cfg: Any) -> Stage | None:
    """The stage `cfg` trains; None for pre-training."""
    name = cfg.posttrain.stage
    if name == "pretrain":
        return None
    if name not in STAGES:
        raise ConfigError(
            f"posttrain.stage={name} is not available here: it comes with scalelab.posttrain, which registers it when "
            "imported (the scalelab command does); import scalelab.posttrain first"
            + (" (ppo is built by scalelab.posttrain.ppo)" if name == "ppo" else "")
        )
    return STAGES[name]
