"""Running a sweep: each planned run is a normal training run in `<sweep_dir>/runs/<run>/`.

Runs execute in this process through `train.loop.train`, the entry point of `scalelab train`.
In-process saves the JAX start-up per run (seconds each, a large share of a small sweep on a
CPU); a hard crash still costs nothing, because every finished run is committed on disk and the
next `sweep run` skips it and resumes the interrupted one from its newest checkpoint.
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
import yaml
from tqdm import tqdm

from scaling.plan import Plan, PlannedRun, human, shard_runs
from scaling.results import curve_summary, read_result, rebuild_csv, write_result
from scaling.spec import SpecError
from train.config import to_dict
from train.loop import NonFiniteLossError, train


@dataclasses.dataclass
class SweepReport:
    """What one `sweep run` did."""

    shard_runs: int  # runs in this shard
    skipped: int  # already finished before this call
    ran: list[str] = dataclasses.field(default_factory=list)
    diverged: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
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


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def check_run_dir(run: PlannedRun, run_dir: Path) -> None:
    """Refuse a run directory started from a different config, instead of mixing two experiments."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    with open(saved_path) as f:
        saved = _flatten(yaml.safe_load(f) or {})
    planned = _flatten(yaml.safe_load(yaml.safe_dump(to_dict(run.config))))  # the same YAML round trip
    changed = [key for key in sorted(saved.keys() & planned.keys()) if saved[key] != planned[key]]
    if changed:
        shown = ", ".join(f"{key}: {saved[key]!r} there, {planned[key]!r} planned" for key in changed[:3])
        raise SpecError(
            f"{run_dir} was trained with a different config than the spec now plans ({shown}); "
            f"use a new --sweep-dir for a changed spec, or delete {run_dir} to retrain that run"
        )


def result_row(run: PlannedRun, run_dir: Path, status: str, wall_s: float) -> dict[str, Any]:
    """The results.csv row of a run that has ended, its losses read from its loss curve."""
    if status == "ok":
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


def _train_one(run: PlannedRun, run_dir: Path, quiet: bool) -> str:
    """Train (or resume) one run; returns its status. Errors other than divergence propagate."""
    try:
        with redirect_stdout(_BarSafeStdout()):
            train(run.config, run_dir, quiet=quiet)
    except NonFiniteLossError as error:
        tqdm.write(f"{run.name}: diverged: {error}", file=sys.stderr)
        return "diverged"
    return "ok"


def run_sweep(plan: Plan, sweep_dir: Path, shard: tuple[int, int] = (0, 1), quiet: bool = False) -> SweepReport:
    """Train every unfinished run of this shard in `sweep_dir`, committing each row as it ends.

    A run that raises is reported and skipped (the next call retries it); divergence is a result
    (status `diverged`); a run that returns early (a preemption) stops the sweep.
    """
    sweep_dir = Path(sweep_dir)
    names = [run.name for run in plan.runs]
    is_writer = jax.process_index() == 0
    if is_writer:
        rebuild_csv(sweep_dir, names)  # heals a crash between committing a row and rebuilding the table
    mine = shard_runs(plan.runs, *shard)
    for run in mine:
        check_run_dir(run, sweep_dir / "runs" / run.name)
    todo = [run for run in mine if read_result(sweep_dir / "runs" / run.name) is None]
    report = SweepReport(shard_runs=len(mine), skipped=len(mine) - len(todo))
    done_flops = sum(run.flops for run in mine) - sum(run.flops for run in todo)
    label = f"sweep {plan.spec.name}" + (f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
    bar = tqdm(
        total=sum(run.flops for run in mine),
        initial=done_flops,
        unit="FLOP",
        unit_scale=True,
        smoothing=0,  # the sweep's average FLOP rate: runs differ too much for a recent-rate ETA
        desc=label,
        disable=not is_writer,
        dynamic_ncols=True,
        bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} FLOP [{elapsed}<{remaining}]{postfix}",
    )
    bar.set_postfix_str(f"{report.skipped}/{len(mine)} runs done")
    try:  # a preemption (IncompleteRunError, SystemExit) or Ctrl-C ends the sweep; the next call resumes it
        for index, run in enumerate(todo, start=report.skipped + 1):
            bar.set_description_str(f"{label} [{index}/{len(mine)}] {run.name}")
            if is_writer:
                tqdm.write(
                    f"[{index}/{len(mine)}] {run.name}: N={human(run.n_total)} (non-embedding "
                    f"{human(run.n_nonembed)}), D={human(run.tokens)}, C={run.flops:.3g}, {run.steps} steps, "
                    f"batch {run.batch_size}, lr {run.lr:.3g}",
                    file=sys.stdout,
                )
            run_dir = sweep_dir / "runs" / run.name
            start = time.perf_counter()
            try:
                status = _train_one(run, run_dir, quiet)
            except Exception:
                # One broken run (out of memory, a bad shape) must not stop a shard's other runs.
                tqdm.write(f"{run.name}: failed:\n{traceback.format_exc()}", file=sys.stderr)
                report.failed.append(run.name)
                continue
            finally:
                jax.clear_caches()  # drop this run's compiled programs before the next shape compiles
            if is_writer:
                write_result(run_dir, result_row(run, run_dir, status, time.perf_counter() - start))
                report.rows = rebuild_csv(sweep_dir, names)
            (report.ran if status == "ok" else report.diverged).append(run.name)
            bar.update(run.flops)
            bar.set_postfix_str(f"{report.skipped + len(report.ran) + len(report.diverged)}/{len(mine)} runs done")
    finally:
        bar.close()
    if is_writer:
        report.rows = rebuild_csv(sweep_dir, names)
    return report
