"""`sweep run --workers N`: the host split between shards, their utilization, and a whole sweep run side by side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scalelab.cli import main
from scalelab.errors import UserError
from scalelab.scaling.sweep.plan import make_plan
from scalelab.scaling.sweep.results import RESULTS_CSV, read_csv, read_result
from scalelab.scaling.sweep.runner import run_sweep
from scalelab.scaling.sweep.spec import spec_from_dict
from scalelab.scaling.sweep.utilization import Utilization, side_by_side
from scalelab.scaling.sweep.workers import Host, auto_workers, split_host
from tests.scaling.sweep.processes import wait_for
from tests.scaling.sweep.specs import micro, write_spec

ROOT = Path(__file__).resolve().parents[3]  # the repo root: tests/scaling/sweep/<file>


def test_a_cpu_host_is_split_into_disjoint_cores():
    host = Host("cpu", 8, (0, 1, 2, 3, 4), 1e12)
    shares = split_host(host, 2, None)
    assert [share.cores for share in shares] == [(0, 2, 4), (1, 3)]
    assert [share.fraction for share in shares] == [0.6, 0.4] and all(share.env == {} for share in shares)
    assert [share.cores for share in split_host(host, 1, None)] == [host.cores]


def test_a_gpu_host_is_split_into_disjoint_visible_devices():
    host = Host("gpu", 4, (0, 1, 2, 3, 4, 5, 6, 7), 4e15)
    shares = split_host(host, 2, "4,5,6,7")  # the job was given GPUs 4-7: the workers pick from those
    assert [share.env["CUDA_VISIBLE_DEVICES"] for share in shares] == ["4,6", "5,7"]
    assert [share.cores for share in shares] == [(0, 2, 4, 6), (1, 3, 5, 7)]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in split_host(host, 4, None)] == ["0", "1", "2", "3"]


def test_auto_picks_one_worker_per_gpu_or_per_core_up_to_a_cap_and_the_runs():
    cpu = Host("cpu", 8, tuple(range(16)), 1e12)
    assert [auto_workers(cpu, runs, max_cpu=8) for runs in (26, 3, 0)] == [8, 3, 1]
    assert auto_workers(Host("cpu", 1, (0, 1), 1e12), 26, max_cpu=8) == 2
    assert auto_workers(Host("gpu", 4, tuple(range(64)), 4e15), 26, max_cpu=8) == 4
    assert auto_workers(Host("tpu", 4, tuple(range(64)), 4e15), 26, max_cpu=8) == 1


@pytest.mark.parametrize(
    ("host", "workers", "message"),
    [
        (Host("cpu", 1, (0, 1), 1e12), 3, r"may use 2 CPU core\(s\).*give --workers 2 or fewer"),
        (Host("gpu", 2, (0, 1, 2, 3), 1e15), 3, r"has 2 GPU\(s\).*give --workers 2 or fewer"),
        (Host("tpu", 4, (0, 1), 1e15), 2, r"not tpu devices; run one `sweep run --shard i/k` per slice"),
        (Host("cpu", 1, (0, 1), 1e12), 0, r"--workers must be at least 1, got 0"),
    ],
)
def test_a_split_the_host_cannot_give_is_an_error_naming_the_limit(host, workers, message):
    with pytest.raises(UserError, match=message):
        split_host(host, workers, None)


def test_side_by_side_shards_count_at_their_share_of_the_machine():
    # two shards, each on half the machine for 100 s of wall time: 100 machine-seconds, not 200
    half = Utilization(flops=5e12, wall_s=100.0, step_s=80.0, peak=1e12, runs=3)
    usage = side_by_side([(half, 0.5), (half, 0.5)], peak=2e12)
    assert (usage.flops, usage.wall_s, usage.step_s, usage.runs, usage.workers) == (1e13, 100.0, 80.0, 6, 2)
    assert usage.of_peak == pytest.approx(1e13 / (100.0 * 2e12))
    assert "100 machine-seconds (2 workers' wall time, each at its share)" in usage.describe()
    assert side_by_side([(None, 0.5), (half, 0.5)], peak=2e12).flops == 5e12  # a shard with nothing finished
    assert side_by_side([(None, 1.0)], peak=1e12) is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "2", "--shard", "0/2"], "cannot be combined with --shard"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--workers", "2", "--dry-run"], "cannot be combined with --dry-run"),
        (["--workers", "auto", "--shard", "1/2"], "cannot be combined with --shard"),
    ],
)
def test_workers_with_options_that_contradict_them_are_refused(tmp_path, capsys, extra, message):
    spec = write_spec(tmp_path, micro())
    assert main(["sweep", "run", str(spec), "--sweep-dir", str(tmp_path / "sweep"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_workers_must_be_a_number_or_auto(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "run", str(write_spec(tmp_path, micro())), "--workers", "two"])
    assert stop.value.code == 2
    assert "--workers: expected a number of workers or auto, got 'two'" in capsys.readouterr().err


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers need two CPU cores")
def test_two_workers_run_the_sweep_stop_on_ctrl_c_and_resume_to_the_results_of_one_process(tmp_path):
    # One shape at three budgets: the largest run goes to shard 0, the two others to shard 1.
    spec = micro(isoflop__sizes=[3e3], isoflop__budgets=[2e8, 1.6e9, 3.2e9], rules__checkpoints_per_run=4)
    plan = make_plan(spec_from_dict(spec))
    largest = max(plan.runs, key=lambda run: run.flops)
    path = write_spec(tmp_path, spec)
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "scalelab", "sweep", "run", str(path), "--sweep-dir", str(sweep_dir)]
    command += ["--workers", "2"]

    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    largest_dir = sweep_dir / "runs" / largest.name
    wait_for(lambda: any((largest_dir / "checkpoints").glob("*/scalelab_manifest.json")), process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 75, output  # each worker saved and stopped: try again
    assert "SIGINT: each worker saves and stops" in output and "the same command resumes the rest" in output
    assert read_result(largest_dir) is None  # stopped mid-run, not recorded
    usable = sorted(os.sched_getaffinity(0))
    for index in range(2):
        log = (sweep_dir / "workers" / f"shard-{index}-of-2.log").read_text()
        assert f"--shard {index}/2 --quiet on cores {usable[index::2]}" in log  # each worker on cores of its own

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 diverged, 0 unfinished; 3 row(s)" in again.stdout
    assert "machine-seconds (2 workers' wall time" in again.stdout

    alone = run_sweep(plan, tmp_path / "alone", quiet=True)  # the same sweep in this one process
    assert not alone.failed
    got = {row["run"]: row for row in read_csv(sweep_dir / RESULTS_CSV)}
    want = {row["run"]: row for row in read_csv(tmp_path / "alone" / RESULTS_CSV)}
    assert list(got) == list(want) == [run.name for run in plan.runs]
    for name, row in want.items():  # interrupted or not, on one core or two: the same numbers
        assert (got[name]["final_loss"], got[name]["eval_loss"]) == (row["final_loss"], row["eval_loss"]), name
