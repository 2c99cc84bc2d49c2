"""Resume after SIGKILL (once in the middle of an asynchronous save) and after SIGTERM is bitwise exact."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scalelab.train.checkpoint_store import saved_steps
from scalelab.train.faults import EXIT_PREEMPTED
from scalelab.train.manifest import verify_manifest
from scalelab.train.metrics import read_metrics
from tests.train.ckpt_support import FAST, assert_states_equal, exact_metrics, saved_state

SCALELAB = Path(sys.executable).with_name("scalelab")
STEPS = 40
OVERRIDES = [
    *FAST,
    f"train.steps={STEPS}",
    "train.eval_every=8",
    "checkpoint.every=4",
    "checkpoint.keep=2",
    "logging.log_every=3",  # metrics are buffered across steps, so saves must flush them first
]
TIMEOUT_S = 300.0


def launch(run_dir: Path, log: Path) -> subprocess.Popen:
    """`scalelab train` of the test config in `run_dir`, its output going to `log`.

    All launches share a persistent compilation cache next to the run: the first one compiles,
    the others load the same executables, which saves most of their start-up on a busy CPU.
    """
    command = [str(SCALELAB), "train", "gpt-tiny", "--run-dir", str(run_dir), "--quiet"]
    for override in OVERRIDES:
        command += ["--set", override]
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(run_dir.parent / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    """Poll `condition` every 2 ms while `proc` runs."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run exited with status {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def freeze(proc: subprocess.Popen) -> None:
    """SIGSTOP `proc` and wait until every one of its threads has stopped."""
    proc.send_signal(signal.SIGSTOP)
    tasks = Path(f"/proc/{proc.pid}/task")
    while any((task / "stat").read_text().rsplit(")", 1)[1].split()[0] != "T" for task in tasks.iterdir()):
        time.sleep(0.001)


def kill_during_save(proc: subprocess.Popen, root: Path, after: int) -> int:
    """SIGKILL `proc` while orbax is still writing a checkpoint newer than `after`; return its step."""

    def in_flight() -> list[int]:
        return [
            int(p.name.split(".")[0]) for p in root.glob("*.orbax-checkpoint-tmp*") if int(p.name.split(".")[0]) > after
        ]

    while True:
        wait_for(lambda: bool(in_flight()), proc, f"a checkpoint save after step {after}")
        freeze(proc)  # frozen, the save cannot commit between our look and the kill
        steps = in_flight()
        if steps:
            proc.kill()
            proc.wait()
            return steps[0]
        proc.send_signal(signal.SIGCONT)  # it committed just before the freeze: catch the next save


def newest(root: Path) -> int:
    """The newest committed checkpoint step (0 if none)."""
    return max(saved_steps(root), default=0)


@pytest.mark.slow
def test_kills_and_preemption_resume_bitwise_exactly(tmp_path):
    reference = tmp_path / "reference"
    assert launch(reference, tmp_path / "reference.log").wait(timeout=TIMEOUT_S) == 0
    run, root = tmp_path / "run", tmp_path / "run" / "checkpoints"

    # 1. SIGKILL while a checkpoint is being written: that step never commits.
    proc = launch(run, tmp_path / "1.log")
    killed = kill_during_save(proc, root, after=4)
    assert killed not in saved_steps(root)
    assert list(root.glob(f"{killed}.orbax-checkpoint-tmp*"))

    # 2. SIGTERM: a synchronous save of the step reached, a message and exit status 75.
    proc = launch(run, tmp_path / "2.log")
    wait_for(lambda: newest(root) > killed, proc, f"a checkpoint after step {killed}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT_S) == EXIT_PREEMPTED
    log = (tmp_path / "2.log").read_text()
    assert f"discarding unfinished checkpoint saves in {root}" in log and f"{killed}.orbax-checkpoint-tmp" in log
    stopped = int(re.search(r"stopped by SIGTERM after (\d+) steps; newest checkpoint: step \1", log).group(1))
    assert killed < stopped < STEPS
    assert verify_manifest(root / str(stopped)) is None
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(stopped))

    # 3. SIGKILL between checkpoints, with metrics of later steps possibly written.
    proc = launch(run, tmp_path / "3.log")
    wait_for(lambda: newest(root) > stopped, proc, f"a checkpoint after step {stopped}")
    proc.kill()
    proc.wait()
    assert newest(root) < STEPS, "the run finished before it could be killed"

    # 4. Resume to the end: the same state, bit for bit, and the same metrics, each step once.
    proc = launch(run, tmp_path / "4.log")
    assert proc.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "4.log").read_text()
    assert_states_equal(saved_state(root / str(STEPS)), saved_state(reference / "checkpoints" / str(STEPS)))
    assert exact_metrics(run) == exact_metrics(reference)
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(STEPS))
    assert [r["step"] for r in read_metrics(run) if "eval_loss" in r] == list(range(7, STEPS, 8))


def test_second_signal_exits_at_once():
    script = (
        "import time\n"
        "from scalelab.train.faults import PreemptionGuard\n"
        "with PreemptionGuard() as guard:\n"
        "    print('ready', flush=True)\n"
        "    while guard.signal_name is None:\n"
        "        time.sleep(0.01)\n"
        "    print(guard.signal_name, flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "SIGTERM\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 128 + signal.SIGINT
    assert "second signal (SIGINT): exiting now without saving" in proc.stderr.read()


def test_a_signal_repeated_within_milliseconds_is_one_notice():
    """A scheduler signalling every process reaches a supervised child twice: directly and via its supervisor."""
    script = (
        "import os, signal, time\n"
        "from scalelab.train.faults import PreemptionGuard\n"
        "with PreemptionGuard() as guard:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    print(guard.signal_name, flush=True)\n"
        "    time.sleep(0.6)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "SIGINT\n"  # still running after the echo: it would otherwise have exited
    assert proc.returncode == 128 + signal.SIGINT  # the one after the echo window is a second signal
    assert proc.stderr.count("saving a checkpoint and stopping") == 1
    assert proc.stderr.count("second signal (SIGINT)") == 1
