"""Multi-host start-up: `jax.distributed` from CLI flags or the cluster, and each process's rows.

`initialize` must run before anything touches a device: afterwards `jax.devices()` lists the
devices of every process and a mesh can span them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from scalelab.model.config import ConfigError
from scalelab.parallel.supervisor import coordinator_host, report_coordinator

if TYPE_CHECKING:
    from jax.sharding import Sharding

# JAX is imported inside the functions that use it: the CLI reads these flags, and a supervisor
# (parallel/supervisor.py) decides from them, without importing JAX.

# Environment variables that stand in for the flags (handy in job scripts).
ENV_VARS = {
    "coordinator": "SCALELAB_COORDINATOR",
    "num_processes": "SCALELAB_NUM_PROCESSES",
    "process_id": "SCALELAB_PROCESS_ID",
}
# How long the processes wait at start-up for one another (JAX's default). A process that is still
# waiting then dies in JAX's C++ client; a supervisor (parallel/supervisor.py) reports it in one line.
STARTUP_TIMEOUT_ENV = "SCALELAB_STARTUP_TIMEOUT"
DEFAULT_STARTUP_TIMEOUT_S = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --coordinator, --num-processes, --process-id and --distributed to a subcommand."""
    group = parser.add_argument_group("multi-host (jax.distributed)")
    group.add_argument(
        "--coordinator", metavar="HOST:PORT", help=f"process 0's address (env {ENV_VARS['coordinator']})"
    )
    group.add_argument(
        "--num-processes", type=int, metavar="N", help=f"processes in the job (env {ENV_VARS['num_processes']})"
    )
    group.add_argument(
        "--process-id", type=int, metavar="I", help=f"this process, 0..N-1 (env {ENV_VARS['process_id']})"
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="initialise jax.distributed from the cluster (TPU pod, SLURM, Open MPI) without explicit flags",
    )


def detect_cluster(environ: Mapping[str, str]) -> str | None:
    """The multi-process launcher JAX can read its settings from, if this process runs under one."""
    if "SLURM_STEP_NODELIST" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"  # inside `srun` with several tasks
    if int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    if "MEGASCALE_COORDINATOR_ADDRESS" in environ or "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "tpu-pod"
    return None


def initialize_kwargs(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """Arguments for jax.distributed.initialize: explicit ones, {} to let JAX detect the cluster, or None."""
    explicit: dict[str, Any] = {}
    for key, var in ENV_VARS.items():
        value = getattr(args, key, None)
        if value is None and var in environ:
            value = environ[var] if key == "coordinator" else _whole_number(var, environ[var])
        if value is not None:
            explicit[key] = value
    if explicit:
        missing = [f"--{key.replace('_', '-')}" for key in ENV_VARS if key not in explicit]
        if missing:
            raise ConfigError(
                f"multi-host launch: {', '.join(missing)} missing; give all of --coordinator, "
                "--num-processes and --process-id (or none, with --distributed)"
            )
        coordinator, count, index = explicit["coordinator"], explicit["num_processes"], explicit["process_id"]
        check_coordinator(coordinator)
        if count < 1:
            raise ConfigError(f"--num-processes must be 1 or more, got {count}")
        if not 0 <= index < count:
            raise ConfigError(f"--process-id ({index}) must be in 0..{count - 1} for --num-processes {count}")
        return {"coordinator_address": coordinator, "num_processes": count, "process_id": index}
    if getattr(args, "distributed", False) or detect_cluster(environ):
        return {}
    return None


def _whole_number(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {text!r}") from None


def check_coordinator(address: str) -> None:
    """Refuse a coordinator address that is not HOST:PORT (JAX's client crashes on a port that is not a number)."""
    host, colon, port = address.rpartition(":")
    example = "e.g. 10.0.0.1:1234 (process 0's host and a free port)"
    if not colon or not host.strip("[]"):
        raise ConfigError(f"--coordinator {address!r} must be HOST:PORT, {example}")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(f"--coordinator {address!r}: the port must be a number from 1 to 65535, {example}")


def resolves(address: str) -> bool:
    """Whether the host of HOST:PORT resolves to an address here (an IP address always does)."""
    try:
        socket.getaddrinfo(coordinator_host(address), None)
    except OSError:
        return False
    return True


def startup_timeout_s(environ: Mapping[str, str] = os.environ) -> int:
    """Seconds the processes wait for one another at start-up: SCALELAB_STARTUP_TIMEOUT, else JAX's 300."""
    text = environ.get(STARTUP_TIMEOUT_ENV)
    if text is None:
        return DEFAULT_STARTUP_TIMEOUT_S
    seconds = _whole_number(STARTUP_TIMEOUT_ENV, text)
    if seconds < 1:
        raise ConfigError(f"{STARTUP_TIMEOUT_ENV} must be 1 or more seconds, got {seconds}")
    return seconds


def startup_failure(kwargs: dict[str, Any], reason: str, environ: Mapping[str, str] = os.environ) -> str:
    """Why a process could not join the job, and the fix: `reason` is "port" (process 0's coordinator could
    not listen on its port) or "timeout" (the wait for the other processes ran out)."""
    address = kwargs.get("coordinator_address")
    if reason == "port":
        if not address:  # the cluster chose the port
            return (
                "process 0 could not listen on the coordinator's port: another program holds it (or it is not "
                "allowed); free it, then run the job again"
            )
        return (
            f"process 0 could not listen on the coordinator's port ({address}): another program holds it (or it "
            "is not allowed); give --coordinator a free port on process 0's host, the same for every process"
        )
    waited = f"within {startup_timeout_s(environ)} s"
    longer = f"{STARTUP_TIMEOUT_ENV}=SECONDS waits longer"
    if not kwargs:  # the cluster named the processes and the address
        return (
            f"the job's processes did not all reach their coordinator {waited}; check that every process of the "
            f"job started, then run it again ({longer})"
        )
    if not resolves(address):
        return (
            f"process {kwargs['process_id']} of {kwargs['num_processes']} could not reach the coordinator {address}: "
            f"its host {coordinator_host(address)!r} does not resolve to an address here; give --coordinator process "
            "0's host name or IP address and a free port, the same for every process"
        )
    return (
        f"process {kwargs['process_id']} of {kwargs['num_processes']} did not meet the other processes at the "
        f"coordinator {address} {waited}; start every process, process 0 included, with the same --coordinator "
        f"(process 0's host and a free port) and --num-processes, then run the job again ({longer})"
    )


def initialize(kwargs: dict[str, Any] | None) -> None:
    """Start jax.distributed with `kwargs` (None: single process, nothing to do)."""
    import jax

    if kwargs is None or jax.distributed.is_initialized():
        return
    timeout = startup_timeout_s()
    if kwargs:  # joining blocks until every process has started: say what it waits for
        print(
            f"scalelab: process {kwargs['process_id']} of {kwargs['num_processes']}: waiting at the coordinator "
            f"{kwargs['coordinator_address']} until all {kwargs['num_processes']} processes have started "
            f"(for up to {timeout} s)",
            file=sys.stderr,
            flush=True,
        )
        if not resolves(kwargs["coordinator_address"]):  # a cluster's DNS may add the name late: only a warning
            host = coordinator_host(kwargs["coordinator_address"])
            print(f"scalelab: warning: the coordinator's host {host!r} does not resolve here (yet)", file=sys.stderr)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout)
    except jax.errors.JaxRuntimeError as error:
        # Process 0's coordinator could not listen: raised here, or (as often) a crash the supervisor reports.
        if "Failed to start RPC server" not in str(error):
            raise
        raise ConfigError(startup_failure(kwargs, "port")) from None
    except ValueError as error:
        if kwargs or "coordinator_address" not in str(error):
            raise
        raise ConfigError(
            "--distributed found no cluster to read the processes from (SLURM srun with several tasks, Open MPI, "
            "a TPU pod); give --coordinator HOST:PORT --num-processes N --process-id I (or set "
            f"{', '.join(ENV_VARS.values())}), or drop --distributed for a single process"
        ) from None
    from jax._src import distributed  # the address JAX settled on, also when it read it from the cluster

    report_coordinator(getattr(distributed.global_state, "coordinator_address", None) or "unknown:0")


def _fields(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf field of a config dataclass, in a fixed order."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{key}.")
        else:
            yield key, value


def config_digests(config: Any) -> tuple[list[str], np.ndarray]:
    """The config's keys and a 32-bit digest of each value, the same length for every config of its class."""
    keys, digests = [], []
    for key, value in _fields(config):
        keys.append(key)
        digests.append(int.from_bytes(hashlib.sha256(repr(value).encode()).digest()[:4], "little", signed=True))
    return keys, np.asarray(digests, np.int32)


def config_mismatch(keys: list[str], digests: np.ndarray) -> str | None:
    """What differs between the processes' config digests (one row per process), or None if nothing does."""
    differing = [p for p in range(1, len(digests)) if (digests[p] != digests[0]).any()]
    if not differing:
        return None
    first = differing[0]
    names = [key for key, a, b in zip(keys, digests[0], digests[first], strict=True) if a != b]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    others = f" (and so do processes {', '.join(map(str, differing[1:]))})" if len(differing) > 1 else ""
    return (
        f"process {first} was started with a different config from process 0 ({shown} differ){others}; "
        "start every process with the same config and the same --set overrides"
    )


def check_same_config(config: Any) -> None:
    """Refuse a multi-process run whose processes resolved different configs (before they meet in a collective)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return
    keys, digests = config_digests(config)
    problem = config_mismatch(keys, np.asarray(multihost_utils.process_allgather(digests)))
    if problem:
        raise ConfigError(problem)


def process_rows(sharding: Sharding, shape: tuple[int, ...]) -> tuple[int, int]:
    """(index, count): this process feeds rows [index * B / count, (index + 1) * B / count) of the batch.

    Processes whose devices hold the same rows (e.g. different pipeline stages or tensor
    shards of one data shard) get the same index, so each loads exactly the rows its
    devices need and no more.
    """
    import jax

    rows = shape[0]
    blocks: dict[int, set[tuple[int, int]]] = {}
    for device, index in sharding.devices_indices_map(shape).items():
        start, stop, _ = index[0].indices(rows)
        blocks.setdefault(device.process_index, set()).add((start, stop))
    return row_shard(blocks, rows, jax.process_index())


def row_shard(blocks: dict[int, set[tuple[int, int]]], rows: int, process_index: int) -> tuple[int, int]:
    """(index, count) of `process_index`'s rows, from the (start, stop) row blocks each process's devices hold.

    A process's blocks must form one contiguous span, and the distinct spans must split the batch evenly.
    """
    spans = {}
    for process, parts in blocks.items():
        start, stop = min(p[0] for p in parts), max(p[1] for p in parts)
        if sum(b - a for a, b in parts) < stop - start:
            raise ConfigError(f"process {process}'s devices hold non-contiguous batch rows; reorder the mesh axes")
        spans[process] = (start, stop)
    distinct = sorted(set(spans.values()))
    width = distinct[0][1] - distinct[0][0]
    if any(b - a != width for a, b in distinct) or len(distinct) * width != rows:
        raise ConfigError(f"the batch rows do not split evenly over processes: {sorted(spans.items())}")
    return distinct.index(spans[process_index]), len(distinct)
