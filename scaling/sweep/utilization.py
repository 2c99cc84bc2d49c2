"""How much of the machine a sweep used, from its own records.

Utilization is the FLOPs the sweep trained divided by (wall time × the measured peak): the wall
time of every run and trunk, as their records keep it, so it counts start-up, compilation,
evaluation and checkpoints. Beside it stands the step utilization, the same FLOPs over the
training steps' own time (metrics.jsonl's step_time_s, what `bench` measures as MFU), so the gap
between the two is the per-run fixed cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from scalelab.scaling.sweep.branches import trunk_dir, trunk_finished
from scalelab.scaling.sweep.plan import Plan, PlannedRun
from scalelab.scaling.sweep.results import WALL_FILE, read_result
from scalelab.train.metrics import read_metrics


@dataclasses.dataclass(frozen=True)
class Utilization:
    """A sweep's trained FLOPs, its wall and step seconds, and the peak they are measured against."""

    flops: float
    wall_s: float
    step_s: float
    peak: float  # FLOP/s of the whole machine the runs used
    runs: int  # finished runs counted
    trunks: int = 0  # finished trunks counted (a branched sweep's shared prefixes)
    workers: int = 1  # shards run side by side, each on its share of the machine (wall and step seconds weighted)

    @property
    def of_peak(self) -> float:
        """FLOPs / (wall time × peak)."""
        return self.flops / (self.wall_s * self.peak)

    @property
    def steps_of_peak(self) -> float:
        """FLOPs / (training-step time × peak): the steps' own MFU."""
        return self.flops / (self.step_s * self.peak)

    def describe(self) -> str:
        """One line for the end of `sweep run`."""
        time = (
            f"{self.wall_s:.0f} s of wall time"
            if self.workers == 1
            else f"{self.wall_s:.0f} machine-seconds ({self.workers} workers' wall time, each at its share)"
        )
        counted = _count(self.runs, "run") + (f" and {_count(self.trunks, 'trunk')}" if self.trunks else "")
        return (
            f"compute utilization {self.of_peak:.1%} of the measured peak ({self.flops:.3g} FLOPs in "
            f"{time} over {counted}, peak {self.peak:.3g} FLOP/s); "
            f"the training steps alone ran at {self.steps_of_peak:.1%} MFU, the rest went to start-up, "
            "compilation, evaluation and checkpoints"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _step_seconds(run_dir: Path, first_step: int) -> float:
    """Seconds the training steps from `first_step` on took, from the run's metrics.jsonl."""
    return sum(float(r["step_time_s"]) for r in read_metrics(run_dir) if "step_time_s" in r and r["step"] >= first_step)


def _wall_seconds(run_dir: Path) -> float:
    try:
        return float((run_dir / WALL_FILE).read_text())
    except (OSError, ValueError):
        return 0.0


def sweep_utilization(
    plan: Plan, sweep_dir: Path, peak: float, runs: Sequence[PlannedRun] | None = None
) -> Utilization | None:
    """The utilization of the finished runs (and finished trunks) of `plan` in `sweep_dir`; None if none finished.

    `runs` limits it to some of the plan's runs (a shard's) and the trunks they branch from.
    """
    runs = plan.runs if runs is None else runs
    flops = wall = step = 0.0
    counted = {"runs": 0, "trunks": 0}
    for run in runs:
        run_dir = Path(sweep_dir) / "runs" / run.name
        row = read_result(run_dir)
        if row is None or row["status"] != "done":
            continue
        flops += run.trained_flops
        wall += float(row["wall_s"])
        step += _step_seconds(run_dir, run.branch_step or 0)  # a branch's curve starts with its trunk's lines
        counted["runs"] += 1
    branched = {run.trunk for run in runs}
    for trunk in plan.trunks:
        path = trunk_dir(sweep_dir, trunk)
        if trunk.name not in branched:
            continue
        if trunk_finished(trunk, path):
            flops += trunk.flops
            wall += _wall_seconds(path)
            step += _step_seconds(path, 0)
            counted["trunks"] += 1
    if not sum(counted.values()) or wall <= 0 or step <= 0:
        return None
    return Utilization(flops, wall, step, peak, **counted)


def side_by_side(parts: Sequence[tuple[Utilization | None, float]], peak: float) -> Utilization | None:
    """The utilization of shards that ran side by side, from (a shard's utilization, its share of the machine).

    Each shard's wall and step seconds count at its share: two shards that each held half the
    machine for 100 s used 100 machine-seconds, not 200.
    """
    done = [(usage, share) for usage, share in parts if usage is not None]
    if not done:
        return None
    return Utilization(
        flops=sum(usage.flops for usage, _ in done),
        wall_s=sum(usage.wall_s * share for usage, share in done),
        step_s=sum(usage.step_s * share for usage, share in done),
        peak=peak,
        runs=sum(usage.runs for usage, _ in done),
        trunks=sum(usage.trunks for usage, _ in done),
        workers=len(parts),
    )
