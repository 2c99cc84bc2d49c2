"""Shared pieces of the checkpoint tests: a fast config, reading saved states and comparable metrics."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental.compilation_cache import compilation_cache

from scalelab.train.checkpoint_compat import path_name
from scalelab.train.metrics import read_metrics

# gpt-tiny on short rows without TensorBoard: a step takes tens of milliseconds on the CPU.
FAST = [
    "train.seq_len=16",
    "train.eval_batches=1",
    "schedule.warmup_steps=2",
    "logging.progress=false",
    "logging.tensorboard=false",
    "logging.peak_flops=1e12",
]
# The fields of a metrics line that must replay exactly (timings may differ).
EXACT_FIELDS = ("step", "loss", "total_loss", "grad_norm", "lr", "data_index", "skipped", "eval_loss")


def flat_arrays(tree: Any) -> dict[str, np.ndarray]:
    """{dotted.path: array} of a tree, named as the checkpoint module names arrays."""
    return {path_name(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def saved_state(step_dir: Path) -> dict[str, np.ndarray]:
    """{dotted.path: array} of the train state stored in one checkpoint folder."""
    return flat_arrays(ocp.PyTreeCheckpointer().restore(epath.Path(step_dir / "state")))


def assert_states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Bitwise equality of two saved states, naming the first array that differs."""
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name].dtype, a[name].shape) == (b[name].dtype, b[name].shape), name
        if a[name].tobytes() != b[name].tobytes():
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # shows where the values differ
            raise AssertionError(f"{name}: equal values with different bits (such as -0.0 and 0.0)")


def exact_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The replayable part of every metrics line, in file order."""
    return [{k: r[k] for k in EXACT_FIELDS if k in r} for r in read_metrics(run_dir)]


@contextlib.contextmanager
def compile_cache(directory: Path) -> Iterator[None]:
    """Share compiled train steps between the runs of the checkpoint tests through JAX's persistent cache.

    Runs of the same config lower to the same program (checkpoint settings and the NaN policies
    other than skip do not change it); loading it instead of compiling it again saves most of
    each run's time. The process's previous settings come back afterwards.
    """
    names = ("jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
    previous = {name: getattr(jax.config, name) for name in names}
    previous_dir = jax.config.jax_compilation_cache_dir
    compilation_cache.set_cache_dir(str(directory))
    for name in names:
        jax.config.update(name, 0)
    compilation_cache.reset_cache()  # re-read the settings on the next compile
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", previous_dir)
        for name, value in previous.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def shared_cache_dir(tmp_path_factory: Any) -> Path:
    """One compilation cache for all checkpoint test modules, across pytest-xdist workers too."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "checkpoint-tests-jax-cache"
