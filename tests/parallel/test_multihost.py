"""Two processes on localhost (jax.distributed over gloo, 2 devices each) train like one process with 4."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.parallel.helpers import tiny_config, train_steps
from tests.parallel.multihost_worker import MESHES
from tests.xla_flags import with_quick_build

ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-5  # fp32; the processes differ from one process only in how collectives travel


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("multihost")
    env = {
        **os.environ,
        "XLA_FLAGS": with_quick_build("--xla_force_host_platform_device_count=2"),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "tests.parallel.multihost_worker", "--coordinator", f"127.0.0.1:{free_port()}"]
    workers = [
        subprocess.Popen(
            [*command, "--num-processes", "2", "--process-id", str(i), "--out", str(out)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [worker.communicate(timeout=240)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log[-3000:]
    return [json.loads((out / f"process_{i}.json").read_text()) for i in range(2)]


def test_processes_see_all_four_devices(reports):
    assert [r["process_index"] for r in reports] == [0, 1]
    assert all(r["device_count"] == 4 for r in reports)


def test_each_process_feeds_only_its_devices_rows(reports):
    # data=2 x tensor=2: process i holds data shard i, so it loads half the batch.
    assert [r["runs"]["data=2 tensor=2"]["rows"] for r in reports] == [[0, 2], [1, 2]]
    # pipeline=2: each process is one stage and needs every row.
    assert [r["runs"]["pipeline=2 data=2"]["rows"] for r in reports] == [[0, 1], [0, 1]]


@pytest.mark.parametrize("name", list(MESHES))
def test_two_processes_match_one_process_with_four_devices(reports, name):
    reference = train_steps(tiny_config(MESHES[name]), jax.devices()[:4]).losses
    for report in reports:
        np.testing.assert_allclose(report["runs"][name]["losses"], reference, rtol=RTOL)
