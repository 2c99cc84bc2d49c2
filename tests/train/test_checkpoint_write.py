"""A checkpoint save the OS refuses (a full disk): one clean error, and the run resumes once there is room."""

import errno
import logging
import sys
import types

import orbax.checkpoint as ocp
import pytest

from scalelab.train import checkpoint_store
from scalelab.train.checkpoint_compat import CheckpointError
from scalelab.train.checkpoint_store import os_error_reason
from scalelab.train.config_io import load_config
from scalelab.train.loop import train
from scalelab.train.metrics import read_metrics
from tests.train.ckpt_support import FAST

# How tensorstore words a full disk under orbax (shortened).
FULL_DISK = (
    'RESOURCE_EXHAUSTED: Error writing "params.embed/0.0" in OCDBT database at local file "ckpt/": '
    "Failed to write 77363 bytes to file 8: No space left on device [os_error_code='28']"
)


def test_the_os_reason_of_a_failed_write():
    assert os_error_reason(ValueError(FULL_DISK)) == "No space left on device"
    assert os_error_reason(OSError(errno.EROFS, "Read-only file system", "x")) == "Read-only file system"
    assert os_error_reason(ValueError("some other failure")) is None


def test_a_refused_save_stops_the_run_with_one_error_and_the_run_then_resumes(tmp_path, monkeypatch):
    cfg = load_config("gpt-tiny", [*FAST, "train.steps=6", "checkpoint.every=2", "train.eval_every=0"])
    real_save = ocp.CheckpointManager.save

    def full_disk_at_step_4(self, step, *args, **kwargs):
        if step == 4:
            raise ValueError(FULL_DISK)
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk_at_step_4)
    with pytest.raises(CheckpointError) as error:
        train(cfg, tmp_path, quiet=True)
    assert str(error.value) == (
        f"saving checkpoint step 4 in {tmp_path}/checkpoints failed: No space left on device; the newest complete "
        "checkpoint is step 2: free space and re-run the same command to resume"
    )
    monkeypatch.undo()  # space was freed
    train(cfg, tmp_path, quiet=True)
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(6))


def test_orbax_logs_of_a_failed_write_are_dropped_and_other_logs_kept():
    def record(message, error=None):
        exc_info = (type(error), error, None) if error else None
        return logging.LogRecord("absl", logging.ERROR, __file__, 1, message, (), exc_info)

    reported = checkpoint_store._ReportedWriteFailures()
    assert not reported.filter(record("_SignalingThread.run() raised an exception", ValueError(FULL_DISK)))
    assert not reported.filter(record(f"Task exception was never retrieved: {FULL_DISK}"))
    assert reported.filter(record("_SignalingThread.run() raised an exception", ValueError("another bug")))


def test_only_the_leftovers_of_a_failed_write_are_kept_from_the_unraisable_hook(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoint_store.quiet_write_failures()
    closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None)
    other = types.SimpleNamespace(exc_value=RuntimeError("something else"), object=None)
    sys.unraisablehook(closed)
    sys.unraisablehook(other)
    assert seen == [other]
