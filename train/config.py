"""The root config's schema: one frozen dataclass per section, and `validate` for checks across sections.

Each section checks its own fields as it is built, naming the full key path (`optimizer.lr`);
loading from YAML and `--set` overrides live in config_io.py.
"""

from __future__ import annotations

import dataclasses

from scalelab.data.config import DataConfig, ObjectiveConfig
from scalelab.data.objectives import model_lengths, validate_objective
from scalelab.errors import ConfigError
from scalelab.model.config import ModelConfig
from scalelab.parallel.config import MeshConfig
from scalelab.train.lr_schedules import LR_SCHEDULES
from scalelab.train.stage import PostTrainConfig

NAN_POLICIES = ("stop", "skip", "rollback")
QAT_BITS = (0, 4, 8)  # train.qat_bits choices; 0 is off (the grids are in train/qat.py)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyperparameters and gradient clipping."""

    lr: float = 3e-4  # peak learning rate, reached after the warmup
    b1: float = 0.9  # AdamW's first-moment decay
    b2: float = 0.95  # AdamW's second-moment decay
    eps: float = 1e-8  # AdamW's denominator epsilon
    weight_decay: float = (
        0.1  # decoupled weight decay of the weight matrices; norms and biases never, embeddings with decay_embeddings
    )
    decay_embeddings: bool = False  # also decay the token and position tables
    clip_norm: float | None = 1.0  # clip gradients to this global norm; null: no clipping

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
    """Learning-rate schedule: linear warmup to optimizer.lr, then the named decay."""

    name: str = "cosine"
    warmup_steps: int = 0  # steps of linear warmup from 0 to optimizer.lr
    min_lr_ratio: float = 0.1  # final lr as a fraction of optimizer.lr
    decay_fraction: float = 0.2  # wsd: the share of steps spent decaying at the end (0: none, a constant lr)

    def __post_init__(self) -> None:
        if self.name not in LR_SCHEDULES:
            raise ConfigError(f"schedule.name: unknown value {self.name!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(f"schedule.decay_fraction must be in [0, 1], got {self.decay_fraction}")


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    """Length, batch shape, evaluation cadence and seed of the training loop."""

    steps: int = 200  # optimizer steps in the run
    batch_size: int = 16  # sequences per optimizer step, over all devices and processes
    seq_len: int = 128  # tokens per sequence
    grad_accum: int = 1  # microbatches whose gradients are summed per optimizer step
    eval_every: int = 100  # evaluate every this many steps and at the end; 0: never
    eval_batches: int = 4  # validation batches averaged into one eval_loss
    z_loss: float = 0.0  # weight of the log(Z)^2 penalty that keeps the softmax normaliser near 1; 0: off
    seed: int = 0  # parameter initialisation and dropout; every draw is keyed by (seed, step)
    qat_bits: int = 0  # quantization-aware training: the loss sees weights on a 4- or 8-bit grid (train/qat.py); 0: off
    qat_group_size: int = 0  # inputs per weight scale for qat_bits; 0: one scale per output channel
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
        if self.qat_bits not in QAT_BITS:
            raise ConfigError(
                f"train.qat_bits={self.qat_bits} is not a grid; use "
                f"{' or '.join(str(bits) for bits in QAT_BITS if bits)} (0 turns quantization-aware training off)"
            )
        if self.qat_group_size < 0:
            raise ConfigError(
                f"train.qat_group_size={self.qat_group_size} must be >= 0 (0: one scale per output channel)"
            )
        if self.max_rollbacks < 0:
            raise ConfigError(f"train.max_rollbacks must be >= 0, got {self.max_rollbacks}")
        if any(index < 0 for index in self.inject_nan_batches):
            raise ConfigError(
                f"train.inject_nan_batches holds data batch indices (>= 0), got {self.inject_nan_batches}"
            )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """How often checkpoints are written and how many are kept (every=0, no every_minutes, no at_steps: off)."""

    every: int = 0  # save every this many steps, and at the end; 0 with every_minutes null: no checkpoints
    every_minutes: float | None = None  # also save when this many minutes passed since the last save; null: off
    keep: int = 3  # newest checkpoints kept; older ones are deleted after each save
    keep_best: int = 0  # also keep this many checkpoints with the lowest eval loss (each eval then saves one)
    async_save: bool = True  # write in a background thread while training goes on
    # Also save after each of these steps, and never delete those checkpoints (a sweep's trunk branches from them).
    at_steps: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if any(not isinstance(step, int) or isinstance(step, bool) or step <= 0 for step in self.at_steps):
            raise ConfigError(f"checkpoint.at_steps holds step counts (whole numbers > 0), got {self.at_steps}")
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
        return self.every > 0 or self.every_minutes is not None or bool(self.at_steps)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where and how often metrics go, and the peak FLOP/s that MFU divides by."""

    log_every: int = 1  # write a metrics line every this many steps
    tensorboard: bool = True  # mirror metrics to <run_dir>/tensorboard/
    progress: bool = True  # show a progress bar with ETA (also off with --quiet)
    peak_flops: float | None = None  # per device; None: measured on CPU, vendor table on GPU/TPU

    def __post_init__(self) -> None:
        if self.log_every <= 0:
            raise ConfigError(f"logging.log_every must be positive, got {self.log_every}")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole training run."""

    name: str = "run"  # the run's name: default run directory runs/<name>; the config file's name when unset
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainLoopConfig = dataclasses.field(default_factory=TrainLoopConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    posttrain: PostTrainConfig = dataclasses.field(default_factory=PostTrainConfig)

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
    _check_attention_reach(cfg)
    if cfg.train.nan_policy == "rollback" and not cfg.checkpoint.enabled:
        raise ConfigError(
            "train.nan_policy=rollback needs checkpoints to roll back to; set checkpoint.every "
            "(or checkpoint.every_minutes)"
        )
    if any(step > cfg.train.steps for step in cfg.checkpoint.at_steps):
        raise ConfigError(
            f"checkpoint.at_steps {cfg.checkpoint.at_steps} asks for a save after step {max(cfg.checkpoint.at_steps)}, "
            f"past the end of training (train.steps={cfg.train.steps}); drop it or train longer"
        )
    if cfg.checkpoint.keep_best and not (cfg.checkpoint.enabled and cfg.train.eval_every):
        raise ConfigError(
            "checkpoint.keep_best ranks checkpoints by eval loss; it needs checkpoint.every "
            "(or checkpoint.every_minutes) and train.eval_every to be set"
        )


def _check_attention_reach(cfg: Config) -> None:
    """Refuse a sliding or sparse pattern that is full attention on every row this run trains.

    A band that reaches every position, or global tokens that are every position, leaves nothing
    out: the run would silently train a full-attention model under a sliding/sparse name.
    """
    model = cfg.model
    if model.attention == "full":
        return
    lengths = model_lengths(cfg)
    # (causal, positions) of each self-attention stack: t5 has a bidirectional encoder and a causal decoder.
    stacks = {
        "gpt": [(True, lengths.inputs)],
        "bert": [(False, lengths.inputs)],
        "t5": [(False, lengths.inputs), (True, lengths.targets)],
    }[model.family]
    # The smallest window whose band covers a whole row: causal sees w-1 back, bidirectional w/2 each side.
    covering = max(length if causal else 2 * (length - 1) for causal, length in stacks)
    rows = f"a row of train.seq_len={cfg.train.seq_len}"
    if model.window >= covering:
        raise ConfigError(
            f"model.window ({model.window}) covers every position of {rows}, so model.attention={model.attention} "
            f"would be full attention; set model.window below {covering}, or model.attention=full"
        )
    longest = max(length for _, length in stacks)
    if model.attention == "sparse" and model.global_tokens >= longest:
        raise ConfigError(
            f"model.global_tokens ({model.global_tokens}) makes every position of {rows} global, so "
            f"model.attention=sparse would be full attention; set model.global_tokens below {longest}, "
            "or model.attention=full"
        )
