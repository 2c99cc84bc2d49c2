"""Sweep records: each finished run's `result.json`, and `results.csv` rebuilt from them atomically.

A run's row is committed by writing `runs/<run>/result.json` (scalelab.files.write_atomic), which only
the job that trained the run ever writes. `results.csv` is a view over those files, rebuilt under
a file lock after every run and at every start, so concurrent shards never lose each other's rows,
a crash never leaves a half-written table, and a run can never appear twice.
"""

from __future__ import annotations

import csv
import fcntl
import io
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scalelab.files import read_json, write_atomic
from scalelab.model.config import ConfigError
from scalelab.train.checkpoint_store import CHECKPOINT_DIR, saved_steps
from scalelab.train.metrics import read_metrics

# DESIGN.md's fixed columns first; the rest describe how the run was configured.
COLUMNS = ("run", "N", "N_nonembed", "D", "C", "final_loss", "eval_loss", "best_eval_loss", "steps", "status")
EXTRA_COLUMNS = ("budget", "seed", "d_model", "n_layers", "n_heads", "batch_size", "lr", "wall_s")
RESULT_FILE = "result.json"
RESULTS_CSV = "results.csv"
WALL_FILE = ".wall_s"  # seconds spent on a run by every session before this one (a resumed run has several)


class IncompleteRunError(RuntimeError):
    """A run returned without reaching its last step (for example after a preemption signal)."""


def curve_summary(run_dir: Path, steps: int) -> dict[str, float | None]:
    """final_loss, eval_loss and best_eval_loss from the run's metrics.jsonl (the kept loss curve).

    Reading the file rather than trusting the caller makes a resumed run report its whole curve.
    """
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    evals = [float(r["eval_loss"]) for r in records if "eval_loss" in r]
    last_step = max((int(r["step"]) for r in train), default=-1)
    if last_step + 1 < steps:
        raise IncompleteRunError(
            f"{run_dir}: metrics.jsonl ends at step {last_step + 1} of {steps}; run the sweep again to resume it"
        )
    final = next(float(r["loss"]) for r in reversed(train) if int(r["step"]) == last_step)
    return {
        "final_loss": final,
        "eval_loss": evals[-1] if evals else None,
        "best_eval_loss": min(evals) if evals else None,
    }


def _missing(row: Any) -> list[str]:
    """The columns a result row lacks (all of them if it is not a mapping)."""
    columns = (*COLUMNS, *EXTRA_COLUMNS)
    return [c for c in columns if c not in row] if isinstance(row, dict) else list(columns)


def add_wall_time(run_dir: Path, seconds: float) -> float:
    """Add one session's seconds to the run's wall time across sessions, and return the total."""
    path = run_dir / WALL_FILE
    try:
        before = float(path.read_text())
    except (OSError, ValueError):
        before = 0.0  # no earlier session (or a record lost with a crash: count from here)
    total = before + seconds
    write_atomic(path, f"{total:.3f}\n")
    return total


def write_result(run_dir: Path, row: dict[str, Any]) -> None:
    """Commit a finished run's row."""
    missing = _missing(row)
    if missing:
        raise ValueError(f"result row for {row.get('run')} lacks {missing}")
    write_atomic(run_dir / RESULT_FILE, json.dumps(row, indent=1) + "\n")


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """A run's committed row, or None if it has not finished; a damaged record is a ConfigError."""
    path = run_dir / RESULT_FILE
    if not path.exists():
        return None
    # The row is re-read from the run's own files; a run whose final checkpoint is intact is not retrained.
    fix = f"delete {path} and run the sweep again to record that run anew"
    row = read_json(path, fix)
    missing = _missing(row)
    if missing:
        raise ConfigError(f"{path}: not a complete run record, it lacks {', '.join(missing)}; {fix}")
    return row


def trained_unrecorded(run_dir: Path, steps: int) -> bool:
    """Whether a run holds the checkpoint of its last step: `sweep run` then only records it, training nothing."""
    return steps in saved_steps(run_dir / CHECKPOINT_DIR)


def finished_runs(sweep_dir: Path) -> list[str]:
    """The names of the runs in `sweep_dir` that have committed a row, sorted."""
    return sorted(path.parent.name for path in (sweep_dir / "runs").glob(f"*/{RESULT_FILE}"))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # repr round-trips exactly
    return str(value)


def _table(sweep_dir: Path, run_names: Iterable[str]) -> tuple[str, int]:
    """The text of results.csv for the committed rows of `run_names` (in that order), and its row count."""
    unique = dict.fromkeys(run_names)  # one row per run, whatever the caller passes
    rows = [row for name in unique if (row := read_result(sweep_dir / "runs" / name)) is not None]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow((*COLUMNS, *EXTRA_COLUMNS))
    for row in rows:
        writer.writerow([_cell(row[c]) for c in (*COLUMNS, *EXTRA_COLUMNS)])
    return buffer.getvalue(), len(rows)


def _released(run_dir: Path) -> bool:
    """A run directory without its result.json: the run is being retrained or recorded anew."""
    return run_dir.is_dir() and not (run_dir / RESULT_FILE).exists()


def _keep_hand_edits(sweep_dir: Path, table: str) -> None:
    """Move aside a results.csv that is not `table` (the rebuilt one) cut to the rows it lists: an edit to keep."""
    path = sweep_dir / RESULTS_CSV
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    if not text.strip():
        return  # nothing to lose
    try:
        header, *rows = csv.reader(io.StringIO(text))
    except (csv.Error, ValueError):  # not CSV, or not even a header
        header, rows = [], []
    if header and header[0] == "run":
        # A row whose run directory has lost its result.json is being recorded anew: no edit to keep.
        rows = [row for row in rows if not (row and _released(sweep_dir / "runs" / row[0]))]
        listed = {row[0] for row in rows if row}
        rebuilt_header, *rebuilt = csv.reader(io.StringIO(table))
        if [header, *rows] == [rebuilt_header, *(row for row in rebuilt if row[0] in listed)]:
            return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = next(
        candidate
        for i in itertools.count()
        if not (candidate := sweep_dir / f"results.edited-{stamp}{f'-{i}' if i else ''}.csv").exists()
    )
    os.replace(path, backup)
    print(
        f"scalelab sweep: warning: {path} differed from the runs' {RESULT_FILE} files (edited by hand); it is "
        f"kept as {backup.name}, and {RESULTS_CSV} is rebuilt from "
        f"runs/*/{RESULT_FILE} (change a row there, or fit the kept copy: scalelab fit {backup})",
        file=sys.stderr,
    )


def rebuild_csv(sweep_dir: Path, run_names: Iterable[str]) -> int:
    """Rewrite results.csv from the committed rows of `run_names` (in that order); returns the row count.

    A results.csv that is not what the last rebuild wrote (edited by hand) is moved aside first.
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / f".{RESULTS_CSV}.lock", "a") as lock:
        # Serialise rebuilds: a shard that commits a row and then rebuilds must not be overwritten
        # by another shard's rebuild that listed the rows before that commit.
        fcntl.lockf(lock, fcntl.LOCK_EX)
        text, count = _table(sweep_dir, run_names)
        _keep_hand_edits(sweep_dir, text)
        write_atomic(sweep_dir / RESULTS_CSV, text)
    return count


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
