"""Wall-time estimate of a plan from a short measured probe on this machine.

A few planned shapes (the cheapest, the median and the dearest per step that fit the probe cap)
each train a handful of steps through `train()`. That gives a fixed cost per run (build, compile,
first eval) and a step time; step time is fitted as overhead + FLOPs-per-step / rate and the
fixed cost interpolated, so every run of the plan gets an estimate.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scalelab.scaling.sweep.plan import Plan, PlannedRun
from scalelab.train.loop import train
from scalelab.train.metrics import read_metrics

EVAL_STEP_FRACTION = 1 / 3  # an eval batch is a forward pass: about a third of a training step


@dataclasses.dataclass(frozen=True)
class ProbePoint:
    """One probed shape: its FLOPs per step, measured step time and fixed cost per run."""

    run: str
    flops_per_step: float
    step_s: float
    fixed_s: float


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Estimated seconds per run and in total; `beyond` counts runs dearer per step than any probe."""

    points: tuple[ProbePoint, ...]
    per_run_s: dict[str, float]
    beyond: int

    @property
    def total_s(self) -> float:
        """Seconds for the whole plan run serially on this machine."""
        return sum(self.per_run_s.values())


def _step_flops(run: PlannedRun) -> float:
    return float(run.flops_per_token * run.batch_size * run.config.train.seq_len)


def _evals(run: PlannedRun) -> int:
    return -(-run.steps // run.config.train.eval_every)


def choose_probes(runs: Sequence[PlannedRun], max_step_flops: float) -> list[PlannedRun]:
    """Up to three runs of distinct cost per step: the cheapest, the median and the dearest under the cap."""
    by_cost: dict[float, PlannedRun] = {}
    for run in sorted(runs, key=lambda r: (_step_flops(r), r.name)):
        if _step_flops(run) <= max_step_flops:
            by_cost.setdefault(_step_flops(run), run)
    candidates = list(by_cost.values())
    if not candidates:
        return []
    picks = {0, len(candidates) // 2, len(candidates) - 1}
    return [candidates[i] for i in sorted(picks)]


def probe_run(run: PlannedRun, steps: int) -> ProbePoint:
    """Train `run`'s shape for `steps` steps (one eval, no checkpoints, no files kept) and time it.

    A branch run's config keeps a checkpoint at its branch point, past the probe's end: that goes too.
    """
    cfg = run.config
    cfg = dataclasses.replace(
        cfg,
        name=f"probe-{run.name}",
        train=dataclasses.replace(cfg.train, steps=steps, eval_every=steps),
        schedule=dataclasses.replace(cfg.schedule, warmup_steps=0),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=0, every_minutes=None, at_steps=[]),
        logging=dataclasses.replace(cfg.logging, tensorboard=False, progress=False, log_every=1),
    )
    with tempfile.TemporaryDirectory(prefix="scalelab-probe-") as tmp:
        start = time.perf_counter()
        train(cfg, Path(tmp), quiet=True)
        wall = time.perf_counter() - start
        times = [float(r["step_time_s"]) for r in read_metrics(Path(tmp)) if "step_time_s" in r]
    # The first step still pays one-off dispatch and allocation costs; it belongs to the fixed cost.
    step_s = statistics.median(times[1:] if len(times) > 1 else times)
    eval_s = cfg.train.eval_batches * step_s * EVAL_STEP_FRACTION
    return ProbePoint(run.name, _step_flops(run), step_s, max(wall - steps * step_s - eval_s, 0.0))


def estimate(plan: Plan, points: Sequence[ProbePoint], runs: Sequence[PlannedRun] | None = None) -> Estimate:
    """Seconds per run from the probe points (step time linear in FLOPs per step, fixed cost interpolated)."""
    runs = plan.runs if runs is None else runs
    flops = np.array([p.flops_per_step for p in points])
    step = np.array([p.step_s for p in points])
    if len(points) > 1:
        slope, overhead = np.polyfit(flops, step, 1)
        if slope <= 0:  # noise on a flat, overhead-bound range: take the mean as a constant step time
            slope, overhead = 0.0, float(step.mean())
    else:  # one point: assume time proportional to work
        slope, overhead = float(step[0] / flops[0]), 0.0
    order = np.argsort(flops)
    per_run: dict[str, float] = {}
    for run in runs:
        f = _step_flops(run)
        step_s = max(overhead + slope * f, float(step.min()))
        fixed = float(np.interp(f, flops[order], np.array([p.fixed_s for p in points])[order]))
        evals = _evals(run) * run.config.train.eval_batches * step_s * EVAL_STEP_FRACTION
        per_run[run.name] = fixed + run.steps * step_s + evals
    beyond = sum(1 for run in runs if _step_flops(run) > flops.max())
    return Estimate(tuple(points), per_run, beyond)
