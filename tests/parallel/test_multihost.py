"""Two processes on localhost (jax.distributed over gloo, 2 devices each) train like one process with 4."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tests.parallel.helpers import tiny_config, train_steps
from tests.parallel.multihost_worker import MESHES
from tests.parallel.processes import run_workers

RTOL = 1e-5  # fp32; the processes differ from one process only in how collectives travel


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("multihost")
    run_workers("tests.parallel.multihost_worker", "--out", str(out), devices=2, timeout=240)
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
