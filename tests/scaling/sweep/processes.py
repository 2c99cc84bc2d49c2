"""Waiting on a sweep run as a subprocess, for the tests that interrupt one."""

from __future__ import annotations

import subprocess
import time


def wait_for(condition, process: subprocess.Popen, timeout: float = 300.0) -> None:
    """Poll `condition` until it holds; fail with the process's output if it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the sweep exited early:\n{process.communicate()[0]}"
        assert time.monotonic() < deadline, "timed out waiting for the sweep"
        time.sleep(0.05)
