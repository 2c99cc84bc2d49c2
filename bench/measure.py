"""Interleaved timing: every contender steps in turn, round after round, in one process.

On a shared host the load changes minute to minute, so comparing runs made at different
times measures the neighbours. Alternating short windows exposes each contender to the
same load; the per-contender median over rounds is what the tables report.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax

from scalelab.runtime.host import release_freed_memory


class Steppable(Protocol):
    """Anything that can time a number of its own train steps."""

    name: str

    def time_steps(self, steps: int) -> float: ...


@dataclasses.dataclass
class Contender:
    """A contender that times whole calls of `run` (a generation, a rollout), each waited for."""

    name: str
    run: Callable[[], Any]

    def time_steps(self, steps: int) -> float:
        """Seconds for `steps` calls, results included."""
        start = time.perf_counter()
        for _ in range(steps):
            jax.block_until_ready(self.run())
        return time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per step of one contender: median and best window, and how it was measured."""

    step_s: float
    best_step_s: float
    steps_per_window: int
    windows: int


def load_average() -> float | None:
    """The host's one-minute load average (None where the OS does not report it)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def interleave(contenders: list[Steppable], rounds: int, window_s: float) -> dict[str, Timing]:
    """Time each contender in windows of about `window_s` (after one settling step), rotating the order every round."""
    steps = {}
    for c in contenders:
        one = c.time_steps(1)
        steps[c.name] = max(1, round(window_s / max(one, 1e-6)))
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        # Rotate so no contender always runs right after the same neighbour (caches, turbo).
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for c in order:
            # The heap is never trimmed on its own, so without this it would keep every contender's
            # high-water mark, fragmented, at once (the d1024 rung then outgrew 24 GiB). The untimed
            # step faults back in what this contender needs, and its timed steps fault nothing.
            release_freed_memory()
            c.time_steps(1)
            samples[c.name].append(c.time_steps(steps[c.name]) / steps[c.name])
    return {name: Timing(statistics.median(s), min(s), steps[name], len(s)) for name, s in samples.items()}
