"""Faults a run survives: preemption signals, skipped data after a NaN rollback, and NaN injection.

Exit status contract (sweep runners rely on it): a run stopped by SIGTERM or SIGINT saves a
checkpoint, prints what it did and exits with EXIT_PREEMPTED (75, EX_TEMPFAIL: "try again");
re-running the same command resumes it. A second signal exits at once with 128 + the signal
number, without saving. A run whose loss turned non-finite under nan_policy=stop exits with
EXIT_DIVERGED (3): re-running it as it is would diverge again.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from types import FrameType
from typing import Any

import numpy as np

EXIT_PREEMPTED = 75
EXIT_DIVERGED = 3
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss or gradient under nan_policy=stop."""


class Preempted(BaseException):
    """The run stopped on SIGTERM/SIGINT after saving (or, with checkpointing off, without saving).

    Like KeyboardInterrupt it is not an Exception, so `except Exception` (a sweep's per-run error
    handling, say) cannot swallow a request to stop.
    """

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class PreemptionGuard:
    """Turns the first SIGTERM/SIGINT into a request to save and stop; the second one exits at once.

    Handlers are installed only in the main thread. With several processes, JAX's preemption
    service owns SIGTERM and picks a step that every process reaches, so all of them save the
    same checkpoint; it ignores SIGINT, so the guard forwards a first SIGINT to it as SIGTERM.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        import jax  # here, not at the top: the CLI imports this module for EXIT_PREEMPTED without JAX

        if threading.current_thread() is threading.main_thread():
            handler = self._handle if jax.process_count() == 1 else self._forward
            for signum in _SIGNALS if jax.process_count() == 1 else (signal.SIGINT,):
                self._previous[signum] = signal.signal(signum, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            os.write(2, f"\nscalelab train: second signal ({name}): exiting now without saving\n".encode())
            os._exit(128 + signum)
        self.signal_name = name
        # os.write, not print: a handler may interrupt a print already in progress.
        os.write(2, f"\nscalelab train: {name}: saving a checkpoint and stopping; send it again to exit now\n".encode())

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        """Multi-process SIGINT: hand it to the preemption service as SIGTERM, so every process stops together."""
        self._handle(signum, frame)
        os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> bool:
        """Whether the run should save and stop after `step` (a sync point every process must call)."""
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() == 1:
            return self.signal_name is not None
        try:
            reached = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # the preemption service is off: nothing can request a stop
            return False
        if reached and self.signal_name is None:  # a process that got no signal itself
            self.signal_name = "preemption notice"
        return reached


@dataclasses.dataclass
class DataSkips:
    """Data batches jumped over after NaN rollbacks, so step t trains on batch data_index(t).

    Each entry (at, count) means: from step `at` on, the data index runs `count` further ahead.
    Without rollbacks the data index equals the step.
    """

    entries: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_json(cls, data: list[list[int]]) -> DataSkips:
        """Read the `data.skips` list of a checkpoint's JSON record."""
        return cls([(int(at), int(count)) for at, count in data])

    def to_json(self) -> list[list[int]]:
        """The `data.skips` list for a checkpoint's JSON record."""
        return [[at, count] for at, count in self.entries]

    def data_index(self, step: int) -> int:
        """The data batch that step `step` trains on."""
        return step + sum(count for at, count in self.entries if at <= step)

    def after_rollback(self, target: int, bad_step: int) -> DataSkips:
        """The skips after rolling back to step `target` from a non-finite `bad_step`.

        Every batch from the one `target` would have used through the bad one is skipped, as
        PaLM does after a loss spike: the bad batch and the ones that led into it.
        """
        kept = [(at, count) for at, count in self.entries if at <= target]
        resume_index = DataSkips(kept).data_index(target)
        skipped = self.data_index(bad_step) + 1 - resume_index
        return DataSkips([*kept, (target, skipped)])


def poison_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of `batch` whose loss weights are NaN, so its loss and gradients are NaN (train.inject_nan_batches)."""
    return {**batch, "weights": np.full_like(batch["weights"], np.nan)}
