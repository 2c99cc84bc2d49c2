"""The root config: typed sections, YAML loading with `base:` inheritance, `--set` overrides.

Every error names the full key path (for example `optimizer.lr`) and, for an unknown key,
the nearest valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from scalelab.configs import CONFIG_DIR
from scalelab.data.config import DataConfig, ObjectiveConfig
from scalelab.data.objectives import validate_objective
from scalelab.files import parse_yaml, read_yaml
from scalelab.model.config import ConfigError, ModelConfig
from scalelab.parallel.config import MeshConfig

SCHEDULES = ("cosine", "linear", "constant", "wsd")
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
    """Learning-rate schedule: linear warmup, then cosine, linear, constant or warmup-stable-decay."""

    name: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # final lr as a fraction of optimizer.lr
    decay_fraction: float = 0.2  # wsd: the share of steps spent decaying at the end

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"schedule.name: unknown value {self.name!r}; choose one of {', '.join(SCHEDULES)}")
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
        validate_objective(self)
        layers = {self.model.n_layers, self.model.encoder_layers, self.model.decoder_layers}
        if self.mesh.pipeline != 1 and self.model.family == "t5" and len(layers) > 1:
            raise ConfigError(
                "mesh.pipeline splits the t5 encoder and decoder into the same stages, so model.n_encoder_layers "
                f"({self.model.encoder_layers}) and model.n_decoder_layers ({self.model.decoder_layers}) must equal "
                f"model.n_layers ({self.model.n_layers})"
            )
        if self.schedule.warmup_steps > self.train.steps:
            raise ConfigError(
                f"schedule.warmup_steps ({self.schedule.warmup_steps}) is longer than training "
                f"(train.steps={self.train.steps}); shorten the warmup or train longer"
            )
        if self.model.position == "learned" and self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len ({self.train.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len}) "
                "with learned positions; raise model.max_seq_len"
            )
        if self.train.nan_policy == "rollback" and not self.checkpoint.enabled:
            raise ConfigError(
                "train.nan_policy=rollback needs checkpoints to roll back to; set checkpoint.every "
                "(or checkpoint.every_minutes)"
            )
        if self.checkpoint.keep_best and not (self.checkpoint.enabled and self.train.eval_every):
            raise ConfigError(
                "checkpoint.keep_best ranks checkpoints by eval loss; it needs checkpoint.every "
                "(or checkpoint.every_minutes) and train.eval_every to be set"
            )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _float(value: Any) -> float | None:
    """`value` as a float if it is a number (YAML 1.1 reads 3e-4, with no dot, as a string), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (dicts become dataclasses)."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of keys, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        number = _float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{path}: expected a finite number, got {value!r}")
            return number
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types by key path."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.0)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
    kwargs = {key: _convert(value, hints[key], f"{prefix}{key}") for key, value in data.items()}
    return cls(**kwargs)


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, section by section (update wins)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted.key: value} of a nested config mapping, for comparing two configs key by key."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def resolve_config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A config file from a path, or a name under configs/ (`gpt-tiny` -> configs/gpt-tiny.yaml)."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.append(relative_to / name_or_path)
    for directory in ([relative_to] if relative_to else []) + [CONFIG_DIR]:
        candidates += [directory / f"{name_or_path}.yaml", directory / str(name_or_path)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {name_or_path!r} not found; give a YAML path or one of: {', '.join(available)}")


def load_raw(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a config with its `base:` chain merged in (child keys win)."""
    path = resolve_config_path(name_or_path, _seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    data = read_yaml(path, "fix the file or pass another config") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    base = data.pop("base", None)
    if base is None:
        return data
    parent = load_raw(base, (*_seen, path))
    parent.pop("name", None)
    return merge_config(parent, data)


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Apply one `a.b.c=value` override; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value, e.g. model.n_layers=4")
    key, raw = override.split("=", 1)
    value = parse_yaml(raw, f"override {override!r}") if raw.strip() else None
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value
    return data


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load, merge, override and validate a config."""
    return config_from_dict(load_raw(name_or_path), overrides)


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Validate a config given as a mapping (for sweeps and tests), with overrides."""
    data = copy.deepcopy(data)  # overrides edit nested sections in place; leave the caller's mapping alone
    for override in overrides:
        data = apply_override(data, override)
    return from_dict(Config, data)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
