"""The root config's schema: one frozen dataclass per section, and `validate` for checks across sections.

Each section checks its own fields as it is built, naming the full key path (`optimizer.lr`);
loading from YAML and `--set` overrides live in config_io.py.
"""

from __future__ import annotations

import dataclasses

from scalelab.data.config import DataConfig, ObjectiveConfig
from scalelab.data.objectives import validate_objective
from scalelab.errors import ConfigError
from scalelab.model.config import ModelConfig
from scalelab.parallel.config import MeshConfig
from scalelab.train.lr_schedules import LR_SCHEDULES

NAN_POLICIES = ("stop", "skip", "rollback")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyperparameters and gradient clipping."""

    lr: float = 3e-4
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    clip_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr must be positive, got {self.lr}")
        for key in ("b1", "b2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"optimizer.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"optimizer.clip_norm must be positive or null, got {self.clip_norm}")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule: linear warmup, then a decay named in lr_schedules.LR_SCHEDULES."""

    name: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # final lr as a fraction of optimizer.lr
    decay_fraction: float = 0.2  # wsd: the share of steps spent decaying at the end

    def __post_init__(self) -> None:
        if self.name not in LR_SCHEDULES:
            raise ConfigError(f"schedule.name: unknown value {self.name!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"schedule.decay_fraction must be in (0, 1], got {self.decay_fraction}")


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    """Length, batch shape, evaluation cadence and seed of the training loop."""

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1  # microbatches whose gradients are summed per optimizer step
    eval_every: int = 100
    eval_batches: int = 4
    z_loss: float = 0.0
    seed: int = 0
    nan_policy: str = "stop"
    max_rollbacks: int = 3  # nan_policy=rollback: stop (as with `stop`) after this many rollbacks in one run
    # Fault injection, to rehearse the NaN policy before a long run: these data batches get NaN loss weights.
    inject_nan_batches: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.eval_every < 0:
            raise ConfigError(f"train.eval_every must be >= 0 (0 turns evaluation off), got {self.eval_every}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) is not divisible by train.grad_accum ({self.grad_accum})"
            )
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError(
                f"train.nan_policy: unknown value {self.nan_policy!r}; choose one of {', '.join(NAN_POLICIES)}"
            )
        if self.max_rollbacks < 0:
            raise ConfigError(f"train.max_rollbacks must be >= 0, got {self.max_rollbacks}")
        if any(index < 0 for index in self.inject_nan_batches):
            raise ConfigError(
                f"train.inject_nan_batches holds data batch indices (>= 0), got {self.inject_nan_batches}"
            )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """How often checkpoints are written and how many are kept (every=0 and no every_minutes: off)."""

    every: int = 0
    every_minutes: float | None = None
    keep: int = 3
    keep_best: int = 0  # also keep this many checkpoints with the lowest eval loss (each eval then saves one)
    async_save: bool = True  # write in a background thread while training goes on

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"checkpoint.every must be >= 0, got {self.every}")
        if self.every_minutes is not None and self.every_minutes <= 0:
            raise ConfigError(f"checkpoint.every_minutes must be positive or null, got {self.every_minutes}")
        if self.keep <= 0:
            raise ConfigError(f"checkpoint.keep must be positive, got {self.keep}")
        if self.keep_best < 0:
            raise ConfigError(f"checkpoint.keep_best must be >= 0, got {self.keep_best}")

    @property
    def enabled(self) -> bool:
        """Whether this run writes checkpoints at all."""
        return self.every > 0 or self.every_minutes is not None


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where and how often metrics go, and the peak FLOP/s that MFU divides by."""

    log_every: int = 1
    tensorboard: bool = True
    progress: bool = True
    peak_flops: float | None = None  # per device; None: measured on CPU, vendor table on GPU/TPU

    def __post_init__(self) -> None:
        if self.log_every <= 0:
            raise ConfigError(f"logging.log_every must be positive, got {self.log_every}")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole training run."""

    name: str = "run"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainLoopConfig = dataclasses.field(default_factory=TrainLoopConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: Config) -> None:
    """Raise ConfigError for settings of different sections that do not fit together.

    Each section checks its own fields when it is built; this runs when the whole Config is.
    """
    validate_objective(cfg)
    layers = {cfg.model.n_layers, cfg.model.encoder_layers, cfg.model.decoder_layers}
    if cfg.mesh.pipeline != 1 and cfg.model.family == "t5" and len(layers) > 1:
        raise ConfigError(
            "mesh.pipeline splits the t5 encoder and decoder into the same stages, so model.n_encoder_layers "
            f"({cfg.model.encoder_layers}) and model.n_decoder_layers ({cfg.model.decoder_layers}) must equal "
            f"model.n_layers ({cfg.model.n_layers})"
        )
    if cfg.schedule.warmup_steps > cfg.train.steps:
        raise ConfigError(
            f"schedule.warmup_steps ({cfg.schedule.warmup_steps}) is longer than training "
            f"(train.steps={cfg.train.steps}); shorten the warmup or train longer"
        )
    if cfg.model.position == "learned" and cfg.train.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"train.seq_len ({cfg.train.seq_len}) exceeds model.max_seq_len ({cfg.model.max_seq_len}) "
            "with learned positions; raise model.max_seq_len"
        )
    if cfg.train.nan_policy == "rollback" and not cfg.checkpoint.enabled:
        raise ConfigError(
            "train.nan_policy=rollback needs checkpoints to roll back to; set checkpoint.every "
            "(or checkpoint.every_minutes)"
        )
    if cfg.checkpoint.keep_best and not (cfg.checkpoint.enabled and cfg.train.eval_every):
        raise ConfigError(
            "checkpoint.keep_best ranks checkpoints by eval loss; it needs checkpoint.every "
            "(or checkpoint.every_minutes) and train.eval_every to be set"
        )
