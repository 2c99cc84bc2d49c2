"""Multi-host start-up settings: CLI flags, environment variables and cluster detection."""

from __future__ import annotations

import argparse

import jax
import numpy as np
import pytest

from scalelab.model.config import ConfigError
from scalelab.parallel.distributed import (
    add_arguments,
    check_same_config,
    config_digests,
    config_mismatch,
    detect_cluster,
    initialize,
    initialize_kwargs,
    startup_failure,
    startup_timeout_s,
)
from scalelab.train.config_io import load_config


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
        # JAX's client dies of a segmentation fault on a port that is not a number.
        (("--coordinator", "h:http", "--num-processes", "2", "--process-id", "0"), r"port must be a number from 1"),
        (("--coordinator", "h:0", "--num-processes", "2", "--process-id", "0"), r"port must be a number from 1"),
        (("--coordinator", "h:65536", "--num-processes", "2", "--process-id", "0"), r"port must be a number from 1"),
        (("--coordinator", ":1234", "--num-processes", "2", "--process-id", "0"), r"':1234' must be HOST:PORT"),
        (("--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"), r"^--num-processes must be 1 or more"),
    ],
)
def test_bad_flags_say_what_to_fix(argv, message):
    with pytest.raises(ConfigError, match=message):
        initialize_kwargs(parse(*argv), {})


def test_addresses_that_are_host_and_port_are_taken_as_given():
    for address in ("node-7.cluster:8476", "[fe80::1]:1234", "10.0.0.1:65535"):
        args = parse("--coordinator", address, "--num-processes", "2", "--process-id", "0")
        assert initialize_kwargs(args, {})["coordinator_address"] == address


def test_variables_that_are_not_numbers_are_named():
    env = {"SCALELAB_COORDINATOR": "h:1", "SCALELAB_NUM_PROCESSES": "two", "SCALELAB_PROCESS_ID": "0"}
    with pytest.raises(ConfigError, match=r"^SCALELAB_NUM_PROCESSES must be a whole number, got 'two'$"):
        initialize_kwargs(parse(), env)
    assert startup_timeout_s({}) == 300  # JAX's own default
    assert startup_timeout_s({"SCALELAB_STARTUP_TIMEOUT": "900"}) == 900
    with pytest.raises(ConfigError, match=r"^SCALELAB_STARTUP_TIMEOUT must be a whole number, got '5m'$"):
        startup_timeout_s({"SCALELAB_STARTUP_TIMEOUT": "5m"})
    with pytest.raises(ConfigError, match=r"^SCALELAB_STARTUP_TIMEOUT must be 1 or more seconds, got 0$"):
        startup_timeout_s({"SCALELAB_STARTUP_TIMEOUT": "0"})


def test_a_start_up_that_failed_names_the_process_the_address_and_the_wait():
    kwargs = {"coordinator_address": "10.0.0.7:1234", "num_processes": 4, "process_id": 3}
    assert startup_failure(kwargs, "timeout", {"SCALELAB_STARTUP_TIMEOUT": "60"}) == (
        "process 3 of 4 did not meet the other processes at the coordinator 10.0.0.7:1234 within 60 s; start every "
        "process, process 0 included, with the same --coordinator (process 0's host and a free port) and "
        "--num-processes, then run the job again (SCALELAB_STARTUP_TIMEOUT=SECONDS waits longer)"
    )
    detected = startup_failure({}, "timeout", {})  # the cluster named the address and the processes
    assert detected.startswith("the job's processes did not all reach their coordinator within 300 s; ")
    assert startup_failure(kwargs, "port") == (
        "process 0 could not listen on the coordinator's port (10.0.0.7:1234): another program holds it (or it is not "
        "allowed); give --coordinator a free port on process 0's host, the same for every process"
    )
    assert startup_failure({}, "port").endswith("free it, then run the job again")
    # A name that resolves nowhere (RFC 6761 keeps .invalid so) is named as the cause.
    unknown = {"coordinator_address": "node0.invalid:1234", "num_processes": 2, "process_id": 1}
    assert startup_failure(unknown, "timeout") == (
        "process 1 of 2 could not reach the coordinator node0.invalid:1234: its host 'node0.invalid' does not resolve "
        "to an address here; give --coordinator process 0's host name or IP address and a free port, the same for "
        "every process"
    )


def test_a_coordinator_that_cannot_listen_is_a_user_error(monkeypatch):
    def taken(**kwargs):
        raise jax.errors.JaxRuntimeError("UNKNOWN: Failed to start RPC server")

    monkeypatch.setattr(jax.distributed, "initialize", taken)
    kwargs = {"coordinator_address": "h:1", "num_processes": 2, "process_id": 0}
    with pytest.raises(ConfigError, match=r"^process 0 could not listen on the coordinator's port \(h:1\)"):
        initialize(kwargs)


def test_distributed_without_a_cluster_says_which_flags_to_give(monkeypatch):
    def no_cluster(**kwargs):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    with pytest.raises(ConfigError, match=r"--distributed found no cluster .* give --coordinator HOST:PORT --num-proc"):
        initialize({})


def test_joining_says_what_it_waits_for_and_for_how_long(monkeypatch, capsys):
    joined = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: joined.append(kwargs))
    monkeypatch.setenv("SCALELAB_STARTUP_TIMEOUT", "45")
    kwargs = initialize_kwargs(parse("--coordinator", "h.invalid:1", "--num-processes", "2", "--process-id", "1"), {})
    initialize(kwargs)
    assert joined == [{**kwargs, "initialization_timeout": 45}]
    assert capsys.readouterr().err == (
        "scalelab: process 1 of 2: waiting at the coordinator h.invalid:1 until all 2 processes have started "
        "(for up to 45 s)\n"
        "scalelab: warning: the coordinator's host 'h.invalid' does not resolve here (yet)\n"
    )
    initialize({**kwargs, "coordinator_address": "127.0.0.1:1"})
    assert "warning" not in capsys.readouterr().err


def _digests(*overrides_per_process: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """The keys and one row of digests per process, as the start-up check gathers them."""
    rows = [config_digests(load_config("gpt-tiny", list(overrides))) for overrides in overrides_per_process]
    assert all(keys == rows[0][0] for keys, _ in rows)  # same length whatever the values, even mesh.rules
    return rows[0][0], np.stack([digests for _, digests in rows])


def test_processes_with_the_same_resolved_config_agree():
    # An override that sets a key to its value already resolves to the same config.
    assert config_mismatch(*_digests((), ("train.steps=300",), ())) is None


def test_a_process_with_another_config_is_named_with_the_keys_that_differ():
    different = ("train.steps=70", "model.n_layers=3", "mesh.rules={heads: null}")
    message = config_mismatch(*_digests((), (), different, different))
    assert message == (
        "process 2 was started with a different config from process 0 (model.n_layers, train.steps, mesh.rules "
        "differ) (and so do processes 3); start every process with the same config and the same --set overrides"
    )


def test_a_single_process_checks_nothing(monkeypatch):
    import jax
    from jax.experimental import multihost_utils

    def no_collective(*args):
        raise AssertionError("a single process has no one to gather configs from")

    monkeypatch.setattr(multihost_utils, "process_allgather", no_collective)
    assert check_same_config(load_config("gpt-tiny")) is None
    monkeypatch.setattr(jax, "process_count", lambda: 2)  # the same call on two processes does gather
    with pytest.raises(AssertionError, match="no one to gather"):
        check_same_config(load_config("gpt-tiny"))
