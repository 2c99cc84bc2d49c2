"""Run-directory metrics: one JSON object per line in metrics.jsonl, mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scalelab.files import write_atomic
from scalelab.model.config import ConfigError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible rather than dropping the line
    return value


def _plottable(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class MetricsWriter:
    """Appends metric records to `run_dir/metrics.jsonl` and scalars to `run_dir/tensorboard/`."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None):
        self.path = run_dir / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - held open for the run's lifetime
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            # After a resume, TensorBoard hides the earlier session's events from purge_step on.
            self._tb = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        """Write one record (it must carry `step`)."""
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                # TensorBoard draws no NaN or Inf (tensorboardX warns about each); metrics.jsonl keeps them.
                if key != "step" and _plottable(value):
                    self._tb.add_scalar(key, value, record["step"])

    def flush(self, durable: bool = False) -> None:
        """Push buffered lines to the OS (and with `durable`, to the disk itself)."""
        self._file.flush()
        if durable:
            os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close both sinks."""
        self.flush()
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of a run's metrics.jsonl, in file order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def steps_logged(run_dir: Path) -> int:
    """How many updates the newest train line of a run's metrics describes (step s is after s + 1); 0 without one.

    Read while the run may be appending: a line still being written is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return 0
    with open(path) as f:
        lines = f.readlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "loss" in record and isinstance(record.get("step"), int):
            return record["step"] + 1
    return 0


def _stepped_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(line, record) of every parseable line; a record without an integer `step` is an error naming its line."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ConfigError(
                    f"{path} line {number} ({line.strip()[:60]!r}) has no integer 'step'; every metrics line "
                    "needs one: fix or delete that line"
                )
            yield line, record


def refuse_replacing(run_dir: Path) -> None:
    """Refuse to start over in a run directory whose metrics.jsonl already holds a run."""
    path = Path(run_dir) / METRICS_FILE
    steps = [record["step"] for _, record in _stepped_lines(path)] if path.exists() else []
    if steps:
        raise ConfigError(
            f"{run_dir} already holds a run ({path}: {len(steps)} lines, steps {min(steps)}..{max(steps)}) that no "
            "checkpoint can resume; give another --run-dir for a new run, or add --overwrite to start this one "
            "over (it deletes the run's metrics, TensorBoard events and checkpoints)"
        )


def clear_metrics(run_dir: Path) -> None:
    """Delete a run's metrics.jsonl and TensorBoard events, so a run started over shows only itself."""
    (Path(run_dir) / METRICS_FILE).unlink(missing_ok=True)
    if (Path(run_dir) / TENSORBOARD_DIR).is_dir():
        shutil.rmtree(Path(run_dir) / TENSORBOARD_DIR)


def truncate_metrics(run_dir: Path, before_step: int, rewrite: bool = True) -> list[dict[str, Any]]:
    """Keep only the records of steps before `before_step` (rewritten atomically) and return them.

    A resume from step s replays steps s, s+1, ...; dropping their old lines keeps every step
    exactly once. A line cut short by a kill can only be the last one, written after the
    newest checkpoint, so unparseable lines are dropped too.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    kept_lines, kept = [], []
    for line, record in _stepped_lines(path):
        if record["step"] < before_step:
            kept_lines.append(line if line.endswith("\n") else line + "\n")
            kept.append(record)
    if rewrite:  # only the writing process; the others just read what it keeps
        write_atomic(path, "".join(kept_lines))
    return kept
