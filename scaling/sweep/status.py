"""`sweep status`: where each run and trunk of a sweep stands, read from its directory without changing it.

A run is done (or diverged) once it has committed its row; running while a trainer holds its
directory's lock; trained when it holds the checkpoint of its last step but no row yet (the next
`sweep run` only records it); stopped when it trained some steps; otherwise not started.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scalelab.scaling.sweep.branches import trunk_dir, trunk_finished
from scalelab.scaling.sweep.plan import Plan, PlannedRun
from scalelab.scaling.sweep.results import read_result
from scalelab.train.checkpoint_store import CHECKPOINT_DIR, saved_steps
from scalelab.train.faults import lock_holder
from scalelab.train.metrics import steps_logged
from scalelab.units import si

STATES = ("done", "diverged", "running", "trained", "stopped", "not started")


@dataclasses.dataclass(frozen=True)
class Progress:
    """One run's (or trunk's) state, as its directory shows it."""

    name: str
    state: str  # one of STATES
    steps: int  # planned
    logged: int  # updates its newest metrics line describes
    checkpoint: int | None  # its newest saved step
    holder: str | None = None  # who trains it, when running
    row: dict[str, Any] | None = None  # its committed results row

    @property
    def loss(self) -> str:
        """The finished run's final loss, with its eval loss when it has one."""
        if self.row is None:
            return ""
        final, evaluated = self.row.get("final_loss"), self.row.get("eval_loss")
        text = "" if final is None else f"{final:.4f}"
        return text + ("" if evaluated is None else f" (eval {evaluated:.4f})")

    @property
    def note(self) -> str:
        """What comes next for it."""
        if self.state == "running":
            return f"trained by {self.holder}"
        if self.state == "trained":
            return "reached its last step; the next sweep run records it"
        if self.state == "stopped":
            if self.checkpoint is None:
                return "no checkpoint: restarts from step 0"
            return f"resumes from checkpoint {self.checkpoint}"
        return ""


def progress(name: str, directory: Path, steps: int, done: bool, row: dict[str, Any] | None = None) -> Progress:
    """The state of the run (or trunk) `name` trained in `directory` to `steps` steps; `done` once it is complete."""
    saved = saved_steps(directory / CHECKPOINT_DIR) if directory.is_dir() else []
    holder = lock_holder(directory)
    logged = steps_logged(directory)
    if row is not None:
        state = "diverged" if row.get("status") == "diverged" else "done"
    elif done:
        state = "done"
    elif holder is not None:
        state = "running"
    elif steps in saved:
        state = "trained"
    elif logged or saved:
        state = "stopped"
    else:
        state = "not started"
    return Progress(name, state, steps, logged, saved[-1] if saved else None, holder, row)


def sweep_progress(plan: Plan, sweep_dir: Path, runs: Sequence[PlannedRun]) -> tuple[list[Progress], list[Progress]]:
    """(the state of each of `runs`, of each trunk they branch off)."""
    states = []
    for run in runs:
        run_dir = sweep_dir / "runs" / run.name
        row = read_result(run_dir)
        states.append(progress(run.name, run_dir, run.steps, False, row))
    names = {run.name for run in runs}
    trunks = [trunk for trunk in plan.trunks if names & set(trunk.runs)]
    trunk_states = [
        progress(
            trunk.name, trunk_dir(sweep_dir, trunk), trunk.steps, trunk_finished(trunk, trunk_dir(sweep_dir, trunk))
        )
        for trunk in trunks
    ]
    return states, trunk_states


def trained_flops(plan: Plan, runs: Sequence[PlannedRun], states: list[Progress], trunks: list[Progress]) -> float:
    """FLOPs of the steps already trained: each run's own (a branch's cooldown only), each trunk's once."""
    total = 0.0
    for run, state in zip(runs, states, strict=True):
        own = run.steps if state.row is not None else min(state.logged, run.steps)
        total += max(0, own - (run.branch_step or 0)) * run.flops_per_step
    flops_per_step = {trunk.name: trunk.flops_per_step for trunk in plan.trunks}
    for trunk in trunks:
        total += min(trunk.logged, trunk.steps) * flops_per_step[trunk.name]
    return total


def _next(run: PlannedRun, state: Progress) -> str:
    """What comes next for a run: a branch not yet started waits for its trunk's checkpoint."""
    if state.state == "not started" and run.trunk is not None:
        return f"branches off {run.trunk} at step {run.branch_step}"
    return state.note


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def format_status(plan: Plan, sweep_dir: Path, runs: Sequence[PlannedRun]) -> str:
    """A summary line, then a line per run (and per trunk) with its state, steps, loss and what comes next."""
    states, trunks = sweep_progress(plan, sweep_dir, runs)
    counts = {state: sum(s.state == state for s in states) for state in STATES}
    counted = ", ".join(f"{counts[state]} {state}" for state in STATES[1:] if counts[state])
    own = sum(run.trained_flops for run in runs) + sum(
        trunk.flops for trunk in plan.trunks if trunk.name in {t.name for t in trunks}
    )
    done = trained_flops(plan, runs, states, trunks)
    where = f"{sweep_dir}" + ("" if sweep_dir.is_dir() else " (not there yet: nothing has run)")
    lines = [
        f"sweep {plan.spec.name} in {where}: {counts['done']} of {len(runs)} run(s) done"
        + (f", {counted}" if counted else "")
        + f"; {done:.3g} of {own:.3g} FLOPs to train are trained"
        + (f" ({done / own:.0%})" if own else "")
    ]
    header = ("run", "N", "D", "state", "steps", "loss", "next")
    rows = [
        (s.name, si(run.n_total), si(run.tokens), s.state, f"{min(s.logged, s.steps)}/{s.steps}", s.loss, _next(run, s))
        for run, s in zip(runs, states, strict=True)
    ]
    lines += _table(header, rows)
    if trunks:
        lines.append("")
        lines += _table(
            ("trunk", "state", "steps", "next"),
            [(t.name, t.state, f"{min(t.logged, t.steps)}/{t.steps}", t.note) for t in trunks],
        )
    return "\n".join(lines)
