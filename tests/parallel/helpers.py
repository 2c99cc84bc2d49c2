"""A tiny model and a short training run shared by the parallelism tests."""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from scalelab.data import make_source
from scalelab.model.config import ModelConfig
from scalelab.train.config import Config
from scalelab.train.config_io import config_from_dict
from scalelab.train.trainer import Trainer
from tests.xla_flags import QUICK_BUILD_OPTIONS

# 8 layers so that pipeline=4 can also run circularly (2 groups per stage); 8 heads so that
# tensor parallelism can use all 8 simulated devices.
TINY: dict[str, Any] = {
    "model": {"d_model": 64, "n_layers": 8, "n_heads": 8, "vocab_size": 256, "max_seq_len": 16, "dtype": "float32"},
    "train": {"steps": 5, "batch_size": 16, "seq_len": 16, "eval_every": 0},
    "optimizer": {"lr": 3e-3},
    "schedule": {"warmup_steps": 0},
    "logging": {"progress": False, "tensorboard": False, "peak_flops": 1e12},
}

# For programs compiled with explicit options (tests/xla_flags.py says why).
FAST_COMPILE = QUICK_BUILD_OPTIONS


def tiny_config(mesh: dict[str, Any], *overrides: str) -> Config:
    """The tiny config with `mesh` as its mesh section and `--set`-style overrides."""
    # A deep copy: config_from_dict applies overrides in place to the nested dicts it is given.
    return config_from_dict(copy.deepcopy({**TINY, "mesh": mesh}), list(overrides))


@functools.cache
def initial_state(model: ModelConfig) -> Any:
    """The seed's initial train state, as host arrays, so every mesh starts from it.

    Computed on this process's first device: in a multi-process run each process computes
    the same values and places them with the global shardings.
    """
    cfg = dataclasses.replace(tiny_config({"data": 1}), model=model)
    return jax.device_get(Trainer.build(cfg, jax.local_devices()[:1]).init_state())


@dataclasses.dataclass
class Run:
    """What a short run reports: per-step losses, the compiled step's memory, the trainer and final state."""

    losses: np.ndarray
    memory: dict[str, int]
    trainer: Trainer
    state: Any


def train_steps(cfg: Config, devices: list[jax.Device] | None = None) -> Run:
    """Train cfg.train.steps steps from the shared initial state, feeding batches as the loop does."""
    trainer = Trainer.build(cfg, devices)
    source = make_source(cfg, *trainer.data_shard())
    # Parameters are fp32 and initialised alike whatever the compute dtype or remat policy.
    init_model = dataclasses.replace(cfg.model, dtype="float32", remat="none")
    state = jax.device_put(initial_state(init_model), trainer.state_shardings)
    _, memory = trainer.compile(state, trainer.put_batch(source.batch(0)), FAST_COMPILE)
    losses = []
    for step in range(cfg.train.steps):
        state, metrics = trainer.train_step(state, trainer.put_batch(source.batch(step)))
        losses.append(float(metrics["loss"]))
    return Run(np.asarray(losses), memory, trainer, state)
