"""Run-directory metrics: one JSON object per line in metrics.jsonl, mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible rather than dropping the line
    return value


class MetricsWriter:
    """Appends metric records to `run_dir/metrics.jsonl` and scalars to `run_dir/tensorboard/`."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - held open for the run's lifetime
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            # After a resume, TensorBoard hides the earlier session's events from purge_step on.
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        """Write one record (it must carry `step`)."""
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
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
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(run_dir: Path, before_step: int, rewrite: bool = True) -> list[dict[str, Any]]:
    """Keep only the records of steps before `before_step` (rewritten atomically) and return them.

    A resume from step s replays steps s, s+1, ...; dropping their old lines keeps every step
    exactly once. A line cut short by a kill can only be the last one, written after the
    newest checkpoint, so unparseable lines are dropped too.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    kept_lines, kept = [], []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record["step"] < before_step:
                kept_lines.append(line if line.endswith("\n") else line + "\n")
                kept.append(record)
    if rewrite:  # only the writing process; the others just read what it keeps
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(kept_lines)
        os.replace(tmp, path)
    return kept
