"""Batch sources, chosen by `data.source` through the DATA_SOURCES registry.

A source is step-indexed: `batch(step)` is a pure function of (data seed, step) and returns
this process's rows of the global batch, so a resumed run sees exactly the same data.
Batches are dicts of numpy arrays: `inputs`, `targets` (int32, batch x length) and `weights`
(float32 loss mask), optionally `segment_ids` and `positions`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from scalelab.model.config import ConfigError


class BatchSource(Protocol):
    """Step-indexed batches for training and fixed batches for evaluation."""

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the global training batch at `step`."""
        ...

    def eval_batch(self, index: int) -> dict[str, np.ndarray]:
        """This process's rows of the `index`-th validation batch."""
        ...


def _synthetic(cfg, process_index: int, process_count: int) -> BatchSource:
    from scalelab.data.synthetic import MarkovSource

    return MarkovSource(cfg, process_index, process_count)


def _tfds(cfg, process_index: int, process_count: int) -> BatchSource:
    from scalelab.data.loader import TfdsSource

    return TfdsSource(cfg, process_index, process_count)


DATA_SOURCES: dict[str, Callable[..., BatchSource]] = {"synthetic": _synthetic, "tfds": _tfds}


def make_source(cfg, process_index: int = 0, process_count: int = 1) -> BatchSource:
    """The batch source named by `cfg.data.source`, reading only this process's shard, seen
    through the configured training objective (data/objectives.py)."""
    if cfg.train.batch_size % process_count:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) is not divisible by the process count ({process_count})"
        )
    from scalelab.data.objectives import with_objective  # objectives builds on this module

    source = DATA_SOURCES[cfg.data.source](cfg, process_index, process_count)
    return with_objective(cfg, source, process_index, process_count)


def process_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    """The contiguous rows of a global batch that belong to one process."""
    per_process = global_batch // process_count
    return slice(process_index * per_process, (process_index + 1) * per_process)
