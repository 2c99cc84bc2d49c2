"""A preemption notice to a multi-process job after a run's last step is seen between runs, by every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.parallel.test_multihost import ROOT, free_port
from tests.xla_flags import with_quick_build


def test_a_sigterm_after_the_last_step_stops_every_process_at_the_same_point_between_runs():
    env = {
        **os.environ,
        "XLA_FLAGS": with_quick_build("--xla_force_host_platform_device_count=1"),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "tests.parallel.preemption_worker", "--coordinator", f"127.0.0.1:{free_port()}"]
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
        logs = [worker.communicate(timeout=180)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    seen = []
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log[-3000:]
        seen.append(json.loads(next(line for line in log.splitlines() if line.startswith("{"))))
    for process in seen:
        assert process["during"] == [False] * 5  # no notice yet: the run's steps go on
        assert process["stopped"] == "preemption notice", process  # neither guard saw the signal itself
    assert seen[0]["calls"] == seen[1]["calls"]  # both stop at the same collective call
