"""Running a sweep: each planned run is a normal training run in `<sweep_dir>/runs/<run>/`.

Runs execute in this process through `train.loop.train`, the entry point of `scalelab train`.
In-process saves the JAX start-up per run (seconds each, a large share of a small sweep on a
CPU) and lets runs share compiled programs. A hard crash, which a process per run would contain,
loses little here: every finished run is committed on disk, and the next `sweep run` skips it
and resumes the interrupted one from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import time
import traceback
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils
from tqdm import tqdm

from scalelab.files import read_yaml
from scalelab.model.config import ConfigError
from scalelab.runtime.host import release_freed_memory
from scalelab.runtime.progress import is_terminal, progress_bar
from scalelab.scaling.fit.table import describe
from scalelab.scaling.sweep.branches import start_branch, trunk_dir, trunk_finished
from scalelab.scaling.sweep.plan import Plan, PlannedRun, shard_runs
from scalelab.scaling.sweep.results import (
    add_wall_time,
    curve_summary,
    finished_runs,
    read_result,
    rebuild_csv,
    trained_unrecorded,
    write_result,
)
from scalelab.scaling.sweep.spec_types import SpecError
from scalelab.train.config import Config
from scalelab.train.config_io import to_dict
from scalelab.train.faults import Preempted, PreemptionGuard
from scalelab.train.loop import NonFiniteLossError, train
from scalelab.units import flatten, si

# results.csv status values: the fitter keeps only DONE rows
DONE, DIVERGED = "done", "diverged"


@dataclasses.dataclass
class SweepReport:
    """What one `sweep run` did."""

    shard_runs: int  # runs in this shard
    skipped: int  # already finished before this call
    ran: list[str] = dataclasses.field(default_factory=list)
    diverged: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    recorded: list[str] = dataclasses.field(default_factory=list)  # trained before, only their rows written now
    rows: int = 0  # rows in results.csv afterwards (all shards)


class _BarSafeStdout(io.TextIOBase):
    """Routes a run's printed lines through tqdm, so they appear above the bars instead of inside them."""

    def __init__(self) -> None:
        self._target = sys.stdout  # the real stream, captured before redirect_stdout replaces it
        self._partial = ""

    def write(self, text: str) -> int:
        """Print every complete line with tqdm.write; keep a trailing partial line for later."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._write(line)
        return len(text)

    def flush(self) -> None:
        """Write a pending partial line."""
        if self._partial:
            self._write(self._partial)
            self._partial = ""

    def _write(self, line: str) -> None:
        # tqdm clears the bars only when it sees the real stdout in sys.stdout, so restore it meanwhile.
        with redirect_stdout(self._target):
            tqdm.write(line, file=self._target)


def check_run_dir(config: Config, run_dir: Path) -> None:
    """Refuse a run directory started from a different config, instead of mixing two experiments."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved = flatten(read_yaml(saved_path, f"delete {run_dir} to retrain that run") or {})
    planned = flatten(yaml.safe_load(yaml.safe_dump(to_dict(config))))  # the same YAML round trip
    changed = [key for key in sorted(saved.keys() & planned.keys()) if saved[key] != planned[key]]
    if changed:
        shown = ", ".join(f"{key}: {saved[key]!r} there, {planned[key]!r} planned" for key in changed[:3])
        raise SpecError(
            f"{run_dir} was trained with a different config than the spec now plans ({shown}); "
            f"use a new --sweep-dir for a changed spec, or delete {run_dir} to retrain that run"
        )


def check_sweep_dir(plan: Plan, sweep_dir: Path, mine: list[PlannedRun]) -> None:
    """Refuse a sweep directory that the plan would change, before anything is written to it.

    A finished run the plan does not contain (another spec's, or one a changed spec dropped) would
    lose its row when results.csv is rebuilt from the plan. A run directory trained from a config
    other than the planned one would mix two experiments. This shard's runs and every finished run
    are checked; another shard's unfinished run may be writing its config.yaml right now.
    """
    planned = {run.name for run in plan.runs}
    foreign = [name for name in finished_runs(sweep_dir) if name not in planned]
    if foreign:
        raise SpecError(
            f"{sweep_dir} holds {len(foreign)} finished run(s) that spec {plan.spec.name!r} does not plan "
            f"({describe(foreign, limit=3)}), so rebuilding its results.csv would drop their rows; use another "
            f"--sweep-dir for this spec, or delete those runs from {sweep_dir / 'runs'} if they are not wanted"
        )
    own = {run.name for run in mine}
    for run in plan.runs:
        run_dir = sweep_dir / "runs" / run.name
        if run.name in own or read_result(run_dir) is not None:
            check_run_dir(run.config, run_dir)
    for trunk in plan.trunks:
        check_run_dir(trunk.config, trunk_dir(sweep_dir, trunk))


def result_row(run: PlannedRun, run_dir: Path, status: str, wall_s: float) -> dict[str, Any]:
    """The results.csv row of a run that has ended, its losses read from its loss curve."""
    if status == DONE:
        losses = curve_summary(run_dir, run.steps)
    else:
        losses = {"final_loss": float("nan"), "eval_loss": None, "best_eval_loss": None}
    model = run.config.model
    return {
        "run": run.name,
        "N": run.n_total,
        "N_nonembed": run.n_nonembed,
        "D": run.tokens,
        "C": run.flops,
        **losses,
        "steps": run.steps,
        "status": status,
        "budget": run.budget,
        "seed": run.seed,
        "d_model": model.d_model,
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "batch_size": run.batch_size,
        "lr": run.lr,
        "wall_s": round(wall_s, 2),
    }


def _train_one(name: str, config: Config, run_dir: Path, quiet: bool) -> str:
    """Train (or resume) one run or trunk; returns its status. Errors other than divergence propagate."""
    try:
        with redirect_stdout(_BarSafeStdout()):
            train(config, run_dir, quiet=quiet)
    except NonFiniteLossError as error:
        tqdm.write(f"{name}: diverged: {error}", file=sys.stderr)
        return DIVERGED
    finally:
        release_freed_memory()  # the next run is another size; don't carry this one's heap into it
    return DONE


def _train_run(plan: Plan, run: PlannedRun, sweep_dir: Path, quiet: bool, is_writer: bool, trunk_s: list[float]) -> str:
    """Train one planned run; a branch first has its trunk trained (once) and starts from its checkpoint.

    The seconds spent on the trunk are added to `trunk_s[0]`: the trunk keeps its own wall time, so
    the run's must leave them out, or the sweep's utilization would count them twice.
    """
    run_dir = sweep_dir / "runs" / run.name
    if run.trunk is None:
        return _train_one(run.name, run.config, run_dir, quiet)
    trunk = next(t for t in plan.trunks if t.name == run.trunk)
    path = trunk_dir(sweep_dir, trunk)
    if not trunk_finished(trunk, path):
        tqdm.write(
            f"{trunk.name}: training the shared trunk to step {trunk.steps} ({trunk.flops:.3g} FLOPs) for "
            f"{len(trunk.runs)} branch(es)",
            file=sys.stdout,
        )
        start = time.perf_counter()
        try:
            status = _train_one(trunk.name, trunk.config, path, quiet)
        finally:
            trunk_s[0] += time.perf_counter() - start
            if is_writer and path.is_dir():
                add_wall_time(path, trunk_s[0])
        if status != DONE:
            return status  # a diverged trunk: each of its branches diverged with it
    if is_writer:
        start_branch(path, run.branch_step, run_dir)
    if jax.process_count() > 1:  # the other processes resume the branch from the copy process 0 just made
        multihost_utils.sync_global_devices(f"scalelab_branch_{run.name}")
    return _train_one(run.name, run.config, run_dir, quiet)


class SweepProgress:
    """The sweep-level bar above each run's own bar: the current run, compute done, and the sweep's ETA.

    The ETA models a run's wall time as a fixed cost (build, compile, evaluation) plus its FLOPs at a
    steady rate, fitted to the runs finished so far: on a small sweep the fixed cost is a large share,
    so a FLOPs-only rate would overestimate the remaining big-budget runs from the small first ones.
    """

    def __init__(
        self, label: str, runs: list[PlannedRun], todo: list[PlannedRun], enabled: bool, costs: dict[str, float]
    ):
        self.label, self.total_runs = label, len(runs)
        self.left = list(todo)
        self.cost = costs  # FLOPs each run trains (a branch: its cooldown, and the first of a trunk: the trunk)
        self.finished: list[tuple[float, float]] = []  # (FLOPs, seconds) of runs trained by this call
        self.bar = progress_bar(
            total=sum(costs[run.name] for run in runs),
            initial=sum(costs[run.name] for run in runs) - sum(costs[run.name] for run in todo),
            unit="FLOP",
            unit_scale=True,
            desc=label,
            disable=not enabled,
            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} FLOP [{elapsed}{postfix}]",
        )
        self._show(refresh=False)  # the bar has just drawn itself

    def eta(self) -> float | None:
        """Seconds left for the runs not yet finished, or None before any run has finished."""
        if not self.finished:
            return None
        flops = np.array([f for f, _ in self.finished])
        seconds = np.array([s for _, s in self.finished])
        left = np.array([self.cost[run.name] for run in self.left], dtype=float)
        if len(set(flops)) > 1:
            per_flop, fixed = np.polyfit(flops, seconds, 1)
            if per_flop > 0 and fixed >= 0:
                return float(np.sum(fixed + per_flop * left))
            if per_flop <= 0:  # fixed costs dominate: every run takes about the same time
                return float(seconds.mean() * len(left))
        return float(left.sum() * seconds.sum() / flops.sum())

    def _show(self, refresh: bool) -> None:
        eta = self.eta()
        done = self.total_runs - len(self.left)
        remaining = "?" if eta is None else tqdm.format_interval(eta)
        # In a log file each forced redraw is a line of its own, so only a finished run forces one there.
        self.bar.set_postfix_str(f"<{remaining} left, {done}/{self.total_runs} runs done", refresh=refresh)

    def start(self, run: PlannedRun) -> None:
        """Announce `run` on its own line and in the bar."""
        index = self.total_runs - len(self.left) + 1
        # On a terminal the bar shows the new run at once; in a log the line below says which run starts.
        on_screen = is_terminal(sys.stderr)
        self.bar.set_description_str(f"{self.label} [{index}/{self.total_runs}] {run.name}", refresh=False)
        self._show(refresh=on_screen)
        if not self.bar.disable:
            tqdm.write(
                f"[{index}/{self.total_runs}] {run.name}: N={si(run.n_total)} (non-embedding "
                f"{si(run.n_nonembed)}), D={si(run.tokens)}, C={run.flops:.3g}, {run.steps} steps, "
                f"batch {run.batch_size}, lr {run.lr:.3g}",
                file=sys.stdout,
            )

    def finish(self, run: PlannedRun, seconds: float | None) -> None:
        """Count `run` as done after `seconds`; None: it failed, so neither its time nor its FLOPs count."""
        self.left.remove(run)
        if seconds is not None:
            self.finished.append((self.cost[run.name], seconds))
            self.bar.update(self.cost[run.name])
        self._show(refresh=True)

    def close(self) -> None:
        """Leave the final bar on screen."""
        self.bar.close()


def run_sweep(plan: Plan, sweep_dir: Path, shard: tuple[int, int] = (0, 1), quiet: bool = False) -> SweepReport:
    """Train every unfinished run of this shard in `sweep_dir`, committing each row as it ends.

    A run that raises is reported and skipped (the next call retries it), except for a ConfigError,
    which stops the sweep; divergence is a result (status `diverged`); a signal (SIGTERM, SIGINT)
    stops the sweep with Preempted, mid-run after a save or between runs after a row is committed.
    """
    sweep_dir = Path(sweep_dir)
    names = [run.name for run in plan.runs]
    is_writer = jax.process_index() == 0
    mine = shard_runs(plan.runs, *shard)
    check_sweep_dir(plan, sweep_dir, mine)
    if is_writer:
        rebuild_csv(sweep_dir, names)  # heals a crash between committing a row and rebuilding the table
    todo = [run for run in mine if read_result(sweep_dir / "runs" / run.name) is None]
    report = SweepReport(shard_runs=len(mine), skipped=len(mine) - len(todo))
    label = f"sweep {plan.spec.name}" + (f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
    progress = SweepProgress(label, mine, todo, enabled=is_writer, costs=plan.costs(mine))
    # One guard across every run: a signal after a run's last step, or between runs, stops the sweep
    # once that run's row is committed, instead of being forgotten when the run's own guard closes.
    with PreemptionGuard("sweep") as guard:
        try:  # a preemption (Preempted, IncompleteRunError) ends the sweep; the next call resumes it
            for run in todo:
                if guard.signalled_anywhere():
                    name = guard.signal_name or "a signal to another process"
                    raise Preempted(f"stopped by {name} between runs; {_done(report, mine)}", step=0)
                progress.start(run)
                run_dir = sweep_dir / "runs" / run.name
                start = time.perf_counter()
                wall_s, trunk_s = None, [0.0]
                trained = trained_unrecorded(run_dir, run.steps)
                try:
                    status = _train_run(plan, run, sweep_dir, quiet, is_writer, trunk_s)
                except Preempted as stop:  # the run saved and stopped: say which run, and how far the sweep got
                    raise Preempted(f"run {run.name} {stop}; {_done(report, mine)}", stop.step) from None
                except ConfigError as error:
                    # A user error (missing data, a config the trainer rejects) would fail every run alike.
                    raise ConfigError(
                        f"run {run.name}: {error} (the sweep stopped; its finished runs are kept, and the same "
                        "command continues it once this is fixed)"
                    ) from error
                except Exception:
                    # One broken run (out of memory, a bad shape) must not stop a shard's other runs.
                    tqdm.write(f"{run.name}: failed:\n{traceback.format_exc()}", file=sys.stderr)
                    report.failed.append(run.name)
                    progress.finish(run, None)
                    continue
                finally:
                    jax.clear_caches()  # drop this run's compiled programs before the next shape compiles
                    seconds = time.perf_counter() - start  # the trunk's time too: the bar counts its FLOPs
                    if is_writer and run_dir.is_dir():  # every session that started the run counts
                        wall_s = add_wall_time(run_dir, seconds - trunk_s[0])
                if is_writer:
                    total = seconds - trunk_s[0] if wall_s is None else wall_s  # no directory yet: its only session
                    write_result(run_dir, result_row(run, run_dir, status, total))
                    report.rows = rebuild_csv(sweep_dir, names)
                (report.diverged if status != DONE else report.recorded if trained else report.ran).append(run.name)
                progress.finish(run, seconds)
        finally:
            progress.close()
    if is_writer:
        report.rows = rebuild_csv(sweep_dir, names)
    return report


def _done(report: SweepReport, mine: list[PlannedRun]) -> str:
    """How far the shard got, for the line a stopped sweep ends with."""
    done = report.skipped + len(report.ran) + len(report.recorded) + len(report.diverged)
    return f"{done} of {len(mine)} run(s) finished and kept; run the same command again to resume the rest"
