"""Killing `scalelab sweep run` with SIGKILL mid-sweep, then running it again, completes the sweep."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from scalelab.scaling.sweep.plan import make_plan
from scalelab.scaling.sweep.results import RESULTS_CSV, read_csv
from scalelab.scaling.sweep.spec import load_spec
from scalelab.train.metrics import read_metrics
from tests.scaling.sweep.processes import wait_for
from tests.scaling.sweep.specs import micro, write_spec

ROOT = Path(__file__).resolve().parents[3]  # the repo root: tests/scaling/sweep/<file>
# One shape at two budgets: run A is short; run B is long enough to be killed between its checkpoints.
# (Sharing a shape lets B reuse A's compiled init and eval programs from the sweep's compile cache.)
SPEC = micro(isoflop__budgets=[3e8, 1.1e9], isoflop__sizes=[3e3], rules__checkpoints_per_run=4)


def _sweep(spec: Path, sweep_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "scalelab", "sweep", "run", str(spec), "--sweep-dir", str(sweep_dir)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _has_committed_checkpoint(run_dir: Path) -> bool:
    """A checkpoint is committed once sealed and renamed from its temporary folder to its bare step number."""
    return any(path.parent.name.isdigit() for path in (run_dir / "checkpoints").glob("*/scalelab_manifest.json"))


def test_sigkill_mid_sweep_then_rerun_completes_without_rerunning_or_duplicating(tmp_path):
    spec = write_spec(tmp_path, SPEC)
    sweep_dir = tmp_path / "sweep"
    first, second = make_plan(load_spec(spec)).runs
    assert first.steps < second.steps and second.config.checkpoint.every < second.steps
    dir_a, dir_b = sweep_dir / "runs" / first.name, sweep_dir / "runs" / second.name

    process = _sweep(spec, sweep_dir)
    wait_for(lambda: _has_committed_checkpoint(dir_b), process)
    os.kill(process.pid, signal.SIGKILL)  # no chance to clean up: mid-run, maybe mid-save
    process.wait()
    assert [row["run"] for row in read_csv(sweep_dir / RESULTS_CSV)] == [first.name]
    assert not (dir_b / "result.json").exists()
    stamps = [os.stat(dir_a / name).st_mtime_ns for name in ("result.json", "metrics.jsonl")]

    process = _sweep(spec, sweep_dir)
    output, _ = process.communicate(timeout=300)
    (tmp_path / "rerun.log").write_text(output)  # kept for diagnosis
    assert process.returncode == 0, output
    assert "1 run(s) trained, 1 already done" in output
    assert re.search(r"compute utilization \d+\.\d% of the measured peak .* over 2 runs, peak", output)
    resumed = re.search(r"resuming from step (\d+)", output)
    assert resumed and 0 < int(resumed.group(1)) < second.steps, output  # B went on from its checkpoint
    assert f"[1/2] {first.name}" not in output  # A, finished before the kill, did not run again
    assert stamps == [os.stat(dir_a / name).st_mtime_ns for name in ("result.json", "metrics.jsonl")]

    rows = read_csv(sweep_dir / RESULTS_CSV)
    assert [row["run"] for row in rows] == [first.name, second.name]  # no row lost, none twice
    assert all(row["status"] == "done" for row in rows)
    steps = [r["step"] for r in read_metrics(dir_b) if "loss" in r]
    assert steps == list(range(second.steps))  # the resumed curve has every step exactly once
