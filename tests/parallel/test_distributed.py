"""Multi-host start-up settings: CLI flags, environment variables and cluster detection."""

from __future__ import annotations

import argparse

import jax
import pytest

from model.config import ConfigError
from parallel.distributed import add_arguments, detect_cluster, initialize, initialize_kwargs


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_explicit_flags():
    args = parse("--coordinator", "10.0.0.1:1234", "--num-processes", "4", "--process-id", "3")
    assert initialize_kwargs(args, {}) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}


def test_environment_stands_in_for_flags():
    env = {"SCALELAB_COORDINATOR": "host:99", "SCALELAB_NUM_PROCESSES": "2", "SCALELAB_PROCESS_ID": "0"}
    assert initialize_kwargs(parse(), env) == {"coordinator_address": "host:99", "num_processes": 2, "process_id": 0}
    # A flag wins over its variable.
    assert initialize_kwargs(parse("--process-id", "1"), env)["process_id"] == 1


def test_single_process_needs_no_initialisation():
    assert initialize_kwargs(parse(), {}) is None
    assert initialize_kwargs(parse(), {"SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}) is None


@pytest.mark.parametrize(
    ("env", "cluster"),
    [
        ({"SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "16"}, "slurm"),
        ({"OMPI_COMM_WORLD_SIZE": "8"}, "openmpi"),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "tpu-pod"),
        ({"TPU_WORKER_HOSTNAMES": "t0"}, None),
    ],
)
def test_clusters_are_left_to_jax_to_configure(env, cluster):
    assert detect_cluster(env) == cluster
    assert initialize_kwargs(parse(), env) == ({} if cluster else None)


def test_distributed_flag_asks_jax_to_detect_the_cluster():
    assert initialize_kwargs(parse("--distributed"), {}) == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--coordinator", "h:1"), r"--num-processes, --process-id missing"),
        (("--coordinator", "h", "--num-processes", "2", "--process-id", "0"), r"must be HOST:PORT"),
        (
            ("--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"),
            r"--process-id \(2\) must be in 0\.\.1",
        ),
    ],
)
def test_bad_flags_say_what_to_fix(argv, message):
    with pytest.raises(ConfigError, match=message):
        initialize_kwargs(parse(*argv), {})


def test_distributed_without_a_cluster_says_which_flags_to_give(monkeypatch):
    def no_cluster(**kwargs):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    with pytest.raises(ConfigError, match=r"--distributed found no cluster .* give --coordinator HOST:PORT --num-proc"):
        initialize({})


def test_joining_says_what_it_waits_for(monkeypatch, capsys):
    joined = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: joined.append(kwargs))
    kwargs = initialize_kwargs(parse("--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"), {})
    initialize(kwargs)
    assert joined == [kwargs]
    assert capsys.readouterr().err == (
        "scalelab: process 1 of 2: waiting at the coordinator h:1 until all 2 processes have started\n"
    )
