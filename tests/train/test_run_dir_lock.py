"""One trainer at a time per run directory: the lock, its message, and its release."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scalelab.cli import main
from scalelab.model.config import ConfigError
from scalelab.train import faults
from scalelab.train.checkpoint_compat import CheckpointError
from scalelab.train.config_io import load_config
from scalelab.train.faults import LOCK_FILE, RunDirLock, lock_run_dir
from scalelab.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "train.steps=2",
    "schedule.warmup_steps=0",
    "train.seq_len=16",
    "train.eval_every=0",
    "logging.progress=false",
    "logging.peak_flops=1e12",
]


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run, as a trainer running there would."""
    code = f"from pathlib import Path; from train.faults import lock_run_dir; lock_run_dir(Path({str(tmp_path / 'run')!r})); print('locked', flush=True); input()"
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "locked\n"
    yield process
    process.kill()
    process.wait()


def test_a_second_trainer_is_refused_naming_the_first_and_runs_once_that_one_is_killed(tmp_path, holder, capsys):
    run = tmp_path / "run"
    args = ["train", "gpt-tiny", "--quiet", "--run-dir", str(run)] + [a for o in FAST for a in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"run dir {run} is in use by PID {holder.pid} on {socket.gethostname()} (started " in err
    assert err.endswith("; wait for it to finish or stop it")
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # refused before touching anything

    holder.send_signal(signal.SIGKILL)  # the OS drops a killed trainer's lock
    holder.wait()
    assert main(args) == 0


def test_the_lock_is_released_when_a_run_ends_or_fails(tmp_path):
    cfg = load_config("gpt-tiny", FAST)
    train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, tmp_path / "run", existing="refuse")
    os.close(lock_run_dir(tmp_path / "run"))  # free again: a sweep's next train() could run here


def test_within_one_process_the_lock_is_exclusive_too(tmp_path):
    with RunDirLock(tmp_path / "run"), pytest.raises(ConfigError, match=rf"is in use by PID {os.getpid()} "):
        lock_run_dir(tmp_path / "run")
    os.close(lock_run_dir(tmp_path / "run"))


def test_without_file_locks_the_run_goes_ahead_unlocked(tmp_path, monkeypatch):
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(faults.fcntl, "flock", no_locks)
    assert lock_run_dir(tmp_path / "run") is None
    with RunDirLock(tmp_path / "run"):
        pass


def test_a_run_that_fails_at_start_up_leaves_no_directory_it_made(tmp_path):
    cfg = load_config("gpt-tiny", FAST)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(cfg, tmp_path / "new", init_from=tmp_path / "missing")
    assert not (tmp_path / "new").exists()  # not an empty run directory holding only .lock

    (tmp_path / "kept").mkdir()  # a directory the user made stays, as does its lock file
    with pytest.raises(CheckpointError, match="does not exist"):
        train(cfg, tmp_path / "kept", init_from=tmp_path / "missing")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [LOCK_FILE]
