"""scalelab's side of the benchmark: the Trainer's compiled train step on one shape."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from scalelab.bench.shapes import Shape
from scalelab.train.steps import TrainState
from scalelab.train.trainer import Trainer


@dataclasses.dataclass
class OursRun:
    """A compiled scalelab train step with its state and a few device-resident batches."""

    name: str
    trainer: Trainer
    state: TrainState
    batches: list[dict[str, jax.Array]]
    compile_s: float
    memory: dict[str, int]
    steps_done: int = 0

    def step(self) -> None:
        """One train step; dispatch is asynchronous, as in the training loop."""
        batch = self.batches[self.steps_done % len(self.batches)]
        self.state, _ = self.trainer.train_step(self.state, batch)
        self.steps_done += 1

    def time_steps(self, steps: int) -> float:
        """Seconds for `steps` train steps, from idle device to finished results."""
        jax.block_until_ready(self.state)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        jax.block_until_ready(self.state)
        return time.perf_counter() - start

    def release(self) -> None:
        """Free the device buffers (the ladder builds larger models next)."""
        for leaf in jax.tree.leaves((self.state, self.batches)):
            leaf.delete()


def random_batch(shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Uniform random tokens: throughput does not depend on the text."""
    tokens = rng.integers(0, shape.vocab_size, (shape.batch_size, shape.seq_len + 1), dtype=np.int32)
    weights = np.ones((shape.batch_size, shape.seq_len), np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


def abstract_batch(trainer: Trainer, shape: Shape) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and shardings of one global batch, to compile before any memory is allocated."""
    sharding = trainer.batch_sharding
    rows = (shape.batch_size, shape.seq_len)
    return {
        "inputs": jax.ShapeDtypeStruct(rows, np.int32, sharding=sharding),
        "targets": jax.ShapeDtypeStruct(rows, np.int32, sharding=sharding),
        "weights": jax.ShapeDtypeStruct(rows, np.float32, sharding=sharding),
    }


def compile_only(
    shape: Shape,
    dtype: str = "bfloat16",
    remat: str = "none",
    devices: list[jax.Device] | None = None,
    scan_layers: bool = True,
    unroll_max_layers: int | None = None,
    overrides: tuple[str, ...] = (),
) -> tuple[Trainer, float, dict[str, int]]:
    """Build and AOT-compile the train step from abstract inputs: (trainer, seconds, memory by kind)."""
    trainer = Trainer.build(shape.config(dtype, remat, scan_layers, unroll_max_layers, overrides), devices)
    seconds, memory = trainer.compile(trainer.abstract_state(), abstract_batch(trainer, shape))
    return trainer, seconds, memory


def start(name: str, shape: Shape, compiled: tuple[Trainer, float, dict[str, int]], n_batches: int = 4) -> OursRun:
    """A run of an already compiled trainer: fresh state and batches, warmed up by two steps."""
    trainer, compile_s, memory = compiled
    rng = np.random.default_rng(0)
    batches = [trainer.put_batch(random_batch(shape, rng)) for _ in range(n_batches)]
    run = OursRun(name, trainer, trainer.init_state(), batches, compile_s, memory)
    run.time_steps(2)
    return run


def build(
    name: str, shape: Shape, dtype: str = "bfloat16", remat: str = "none", devices: list[jax.Device] | None = None
) -> OursRun:
    """Compile and start `shape` in one go."""
    return start(name, shape, compile_only(shape, dtype, remat, devices))
