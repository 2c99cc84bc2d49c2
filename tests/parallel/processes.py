"""Two local processes of one jax.distributed job (over gloo), for the multi-process tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.xla_flags import with_quick_build

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(module: str, *args: str, devices: int, timeout: float) -> list[str]:
    """Run `python -m module ARGS` as processes 0 and 1 of a job, `devices` CPU devices each; their output.

    Both must exit 0 (the assertion shows the failing one's output)."""
    env = {
        **os.environ,
        "XLA_FLAGS": with_quick_build(f"--xla_force_host_platform_device_count={devices}"),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", module, *args, "--coordinator", f"127.0.0.1:{free_port()}"]
    workers = [
        subprocess.Popen(
            [*command, "--num-processes", "2", "--process-id", str(i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [worker.communicate(timeout=timeout)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log[-3000:]
    return logs
