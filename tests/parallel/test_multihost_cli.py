"""`scalelab train` as two local processes (jax.distributed over gloo): Ctrl-C, mixed configs, a held run dir,
a killed process, and one process alone at start-up or on a taken port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalelab.train.faults import EXIT_PEER_LOST, EXIT_PREEMPTED, lock_run_dir
from scalelab.train.metrics import read_metrics
from tests.parallel.processes import ROOT, free_port
from tests.xla_flags import with_quick_build

SCALELAB = Path(sys.executable).parent / "scalelab"
FAST = ["schedule.warmup_steps=0", "logging.progress=false", "logging.peak_flops=1e12", "train.eval_every=0"]


def launch(run_dir: Path, *overrides: list[str]) -> list[subprocess.Popen]:
    """Process i of a two-process `scalelab train gpt-tiny`, with FAST plus overrides[i]."""
    env = {
        **os.environ,
        "XLA_FLAGS": with_quick_build("--xla_force_host_platform_device_count=2"),
        "JAX_PLATFORMS": "cpu",
    }
    distributed = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    return [
        subprocess.Popen(
            [
                SCALELAB,
                "train",
                "gpt-tiny",
                "--run-dir",
                str(run_dir),
                *(a for o in [*FAST, *mine] for a in ("--set", o)),
                *distributed,
                "--process-id",
                str(i),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, mine in enumerate(overrides)
    ]


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """(exit status, output) of each process."""
    try:
        logs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [(process.returncode, log) for process, log in zip(processes, logs, strict=True)]


def test_ctrl_c_on_one_process_stops_both_at_the_same_saved_step(tmp_path):
    run = tmp_path / "run"
    processes = launch(run, *[["train.steps=5000", "checkpoint.every=5"]] * 2)
    while not (run / "checkpoints" / "5").is_dir() and processes[0].poll() is None:
        time.sleep(0.05)
    processes[0].send_signal(signal.SIGINT)
    (status0, log0), (status1, log1) = finish(processes)
    assert (status0, status1) == (EXIT_PREEMPTED, EXIT_PREEMPTED), log0[-2000:] + log1[-2000:]
    assert "Traceback" not in log0 + log1
    stopped0 = next(line for line in log0.splitlines() if line.startswith("scalelab train: stopped by SIGINT after "))
    stopped1 = next(line for line in log1.splitlines() if line.startswith("scalelab train: stopped by preemption"))
    step = stopped0.split(" after ")[1].split()[0]
    assert stopped1.split(" after ")[1].split()[0] == step  # the step both processes agreed on
    assert (run / "checkpoints" / step).is_dir()


def _error(log: str) -> str:
    """The process's error line (Gloo's C++ logging may print its connection lines after it)."""
    assert "Traceback" not in log, log[-2000:]
    return [line for line in log.splitlines() if line.startswith("scalelab train: error:")][-1]


def test_processes_with_different_configs_stop_at_start_up_naming_the_difference(tmp_path):
    results = finish(launch(tmp_path / "run", ["train.steps=20"], ["train.steps=30"]))
    for status, log in results:
        assert status == 2, log[-2000:]
        assert _error(log) == (
            "scalelab train: error: process 1 was started with a different config from process 0 (train.steps differ); "
            "start every process with the same config and the same --set overrides"
        )


def test_a_run_dir_in_use_stops_every_process_of_the_second_job(tmp_path):
    run = tmp_path / "run"
    fd = lock_run_dir(run)  # this test process plays the first job's process 0
    try:
        (status0, log0), (status1, log1) = finish(launch(run, ["train.steps=20"], ["train.steps=20"]))
    finally:
        os.close(fd)
    assert (status0, status1) == (2, 2), log0[-2000:] + log1[-2000:]
    assert f"is in use by PID {os.getpid()} on " in _error(log0)
    assert _error(log1) == (
        f"scalelab train: error: run dir {run} is in use by another trainer (see process 0's error)"
    )


def _train_alone(run: Path, address: str, process_id: int, **env: str) -> subprocess.CompletedProcess:
    """One process of a two-process `scalelab train gpt-tiny` at `address`, without the other."""
    fast = [a for o in FAST for a in ("--set", o)]
    alone = ["--coordinator", address, "--num-processes", "2", "--process-id", str(process_id)]
    return subprocess.run(
        [SCALELAB, "train", "gpt-tiny", "--run-dir", str(run), *fast, *alone],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_process_alone_at_start_up_stops_after_its_timeout_with_one_line(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # process 0, which would host the coordinator here, never starts
    done = _train_alone(tmp_path / "run", address, 1, SCALELAB_STARTUP_TIMEOUT="2")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "stack trace" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (
        f"scalelab train: error: process 1 of 2 did not meet the other processes at the coordinator {address} within "
        "2 s; start every process, process 0 included, with the same --coordinator (process 0's host and a free port) "
        "and --num-processes, then run the job again (SCALELAB_STARTUP_TIMEOUT=SECONDS waits longer)"
    )
    assert not (tmp_path / "run").exists()  # nothing was written


def test_process_0_on_a_taken_port_stops_with_one_line(tmp_path):
    with socket.socket() as taken:  # another program listens on the coordinator's port
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = _train_alone(tmp_path / "run", address, 0)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (
        f"scalelab train: error: process 0 could not listen on the coordinator's port ({address}): another program "
        "holds it (or it is not allowed); give --coordinator a free port on process 0's host, the same for every "
        "process"
    )


def _train_lines(run: Path) -> list[tuple[int, float, float]]:
    """(step, loss, grad_norm) of every train line of a run's metrics, in file order."""
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run) if "loss" in r]


KILL_JOB = ["train.steps=40", "checkpoint.every=5"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[tuple[int, float, float]]:
    """The train lines of KILL_JOB run by two processes without interruption."""
    reference = tmp_path_factory.mktemp("reference") / "run"
    assert [status for status, _ in finish(launch(reference, KILL_JOB, KILL_JOB))] == [0, 0]
    return _train_lines(reference)


@pytest.mark.parametrize("killed", [1, 0], ids=["process-1", "process-0-the-coordinator"])
def test_a_killed_process_stops_the_other_with_one_line_and_a_requeue_resumes_bitwise(tmp_path, uninterrupted, killed):
    job, survivor = KILL_JOB, 1 - killed
    run = tmp_path / "run"
    processes = launch(run, job, job)
    while not (run / "checkpoints" / "5").is_dir() and processes[survivor].poll() is None:
        time.sleep(0.05)
    processes[killed].kill()  # SIGKILL: no handler, no goodbye (its trainer dies with it)
    killed_at = time.monotonic()
    results = finish(processes)
    print(f"process {survivor} stopped {time.monotonic() - killed_at:.1f} s after process {killed} was killed")
    (status, log), (killed_status, _) = results[survivor], results[killed]
    assert killed_status == -signal.SIGKILL
    assert status == EXIT_PEER_LOST, log[-3000:]
    assert "stack trace" not in log, log[-3000:]
    line = _error(log)
    prefix = (
        f"scalelab train: error: process {killed} (host ",
        ") stopped responding; the job cannot continue without it. "
        "Requeue the whole job with the same command: it resumes from checkpoint ",
    )
    assert line.startswith(prefix[0]) and prefix[1] in line, line
    step = line.rsplit(" ", 1)[1]
    assert int(step) >= 5 and (run / "checkpoints" / step).is_dir()

    (status0, log0), (status1, log1) = finish(launch(run, job, job))  # the requeue: the same command, both processes
    assert (status0, status1) == (0, 0), log0[-3000:] + log1[-3000:]
    assert f"resuming from step {step} " in log0
    resumed = _train_lines(run)
    assert [s for s, _, _ in resumed] == list(range(40))  # every step exactly once
    assert resumed == uninterrupted  # loss and grad_norm bit for bit
