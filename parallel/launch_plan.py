"""What a launch decides before it touches a device, worked out from the flags and the environment alone.

`--dry-run` prints this: the cluster and this process's place in it, the devices the job will
have, the mesh on them and the batch rows each process feeds. Nothing here starts JAX's backend
or jax.distributed, so it runs on a login node, in a job script's first line, or in a test that
fakes the variables a scheduler sets. The checks are the real run's own (`resolve_axis_sizes`,
`split_dcn`, the sharding rules), applied to an abstract mesh of the expected size.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from jax.sharding import AbstractMesh, PartitionSpec

from scalelab.errors import ConfigError
from scalelab.parallel.distributed import ENV_VARS, detect_cluster, initialize_kwargs, row_shard
from scalelab.parallel.mesh import MESH_AXES, resolve_axis_sizes, split_dcn
from scalelab.parallel.rules import logical_to_mesh, make_rules

# The logical axes of a batch of token ids; the same spec the trainer shards batches with.
BATCH_LOGICAL_AXES = PartitionSpec("batch", "length")


@dataclasses.dataclass(frozen=True)
class ProcessPlace:
    """Where this process stands in the job, as far as the flags and the environment tell."""

    cluster: str | None  # "slurm", "openmpi", "tpu-pod", "flags" (explicit), or None: one process
    initialize: dict[str, Any] | None  # what scalelab passes to jax.distributed.initialize (None: not called)
    coordinator: str  # the coordinator's address, or where JAX will find it
    process_count: int
    process_index: int
    slices: int = 1  # TPU slices joined over DCN (MEGASCALE_NUM_SLICES)


def _slurm(environ: Mapping[str, str]) -> tuple[int, int, str, int]:
    nodes = environ.get("SLURM_STEP_NODELIST", "?")
    where = f"JAX picks the first host of SLURM_STEP_NODELIST ({nodes}), port from SLURM_JOB_ID"
    return int(environ["SLURM_NTASKS"]), int(environ.get("SLURM_PROCID", "0")), where, 1


def _openmpi(environ: Mapping[str, str]) -> tuple[int, int, str, int]:
    where = "JAX reads it from OMPI_MCA_orte_hnp_uri"
    return int(environ["OMPI_COMM_WORLD_SIZE"]), int(environ.get("OMPI_COMM_WORLD_RANK", "0")), where, 1


def _tpu_pod(environ: Mapping[str, str]) -> tuple[int, int, str, int]:
    # The same variables JAX's TPU cluster reads (GKE sets them; on a TPU VM the metadata server knows).
    workers = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES")
    if not workers or "TPU_WORKER_ID" not in environ:
        raise ConfigError(
            "--dry-run on a TPU pod: TPU_WORKER_HOSTNAMES (comma-separated hosts) and TPU_WORKER_ID are not both "
            "set; export them as the pod would (e.g. TPU_WORKER_ID=3) to see that host's launch"
        )
    hosts = workers.split(",")
    slices = int(environ.get("MEGASCALE_NUM_SLICES", "1"))
    index = int(environ["TPU_WORKER_ID"]) + int(environ.get("MEGASCALE_SLICE_ID", "0")) * len(hosts)
    first = environ.get("MEGASCALE_COORDINATOR_ADDRESS") or hosts[0]
    return len(hosts) * slices, index, f"{first.split(':')[0]}, port chosen by JAX", slices


# cluster -> reader of (process count, process index, coordinator, slices) from its variables
_CLUSTERS = {"slurm": _slurm, "openmpi": _openmpi, "tpu-pod": _tpu_pod}


def locate_process(args: argparse.Namespace, environ: Mapping[str, str]) -> ProcessPlace:
    """This process's place in the job: the same decision `initialize_kwargs` makes, spelled out."""
    kwargs = initialize_kwargs(args, environ)
    if kwargs is None:
        return ProcessPlace(None, None, "none (one process)", 1, 0)
    if kwargs:
        return ProcessPlace(
            "flags", kwargs, kwargs["coordinator_address"], kwargs["num_processes"], kwargs["process_id"]
        )
    cluster = detect_cluster(environ)
    if cluster is None:
        raise ConfigError(
            "--dry-run: --distributed, but the environment names no cluster (srun with several tasks, Open MPI, "
            "TPU_WORKER_HOSTNAMES on a TPU pod); set that pod's variables, or give --coordinator HOST:PORT "
            f"--num-processes N --process-id I ({', '.join(ENV_VARS.values())})"
        )
    count, index, coordinator, slices = _CLUSTERS[cluster](environ)
    return ProcessPlace(cluster, kwargs, coordinator, count, index, slices)


def _tpu_chips_per_host(environ: Mapping[str, str]) -> int | None:
    bounds = environ.get("TPU_CHIPS_PER_HOST_BOUNDS")  # e.g. "2,2,1": 4 chips, one JAX device each (v4 and later)
    return math.prod(int(b) for b in bounds.split(",")) if bounds else None


def devices_per_process(place: ProcessPlace, environ: Mapping[str, str], hint: int | None) -> tuple[int | None, str]:
    """(devices each process will have, where that number comes from); None: ask this host's JAX.

    Under SLURM and Open MPI, JAX gives each process the one GPU its local rank numbers, so a job
    runs one process per GPU; on a TPU pod each host has all its chips.
    """
    if hint is not None:
        if hint < 1:
            raise ConfigError(f"--devices-per-process must be positive, got {hint}")
        return hint, "--devices-per-process"
    if environ.get("JAX_LOCAL_DEVICE_IDS"):  # jax.distributed.initialize reads it first (e.g. one process per node)
        return len(
            environ["JAX_LOCAL_DEVICE_IDS"].split(",")
        ), f"JAX_LOCAL_DEVICE_IDS={environ['JAX_LOCAL_DEVICE_IDS']}"
    if place.cluster in ("slurm", "openmpi"):
        return 1, f"{place.cluster}: JAX gives each task the one GPU its local rank numbers"
    if place.cluster == "tpu-pod":
        chips = _tpu_chips_per_host(environ)
        if chips is not None:
            return chips, f"TPU_CHIPS_PER_HOST_BOUNDS={environ['TPU_CHIPS_PER_HOST_BOUNDS']}"
    return None, "this host's devices (jax.local_device_count())"


@dataclasses.dataclass(frozen=True)
class MeshLayout:
    """The mesh a config resolves to on the job's devices, and how its batch splits over them."""

    sizes: dict[str, int]  # mesh axis -> size, in MESH_AXES order, the -1 axis resolved
    mesh: AbstractMesh  # a device-free mesh of that shape, for the sharding rules and their checks
    batch_spec: PartitionSpec  # the batch's sharding: its rows are split over the axes of its first entry

    @property
    def batch_axes(self) -> tuple[str, ...]:
        """The mesh axes the batch rows are split over, slowest-varying first."""
        first = self.batch_spec[0] if len(self.batch_spec) else None
        return () if first is None else (first,) if isinstance(first, str) else tuple(first)


def expected_mesh(mesh_cfg: Any, device_count: int, place: ProcessPlace) -> MeshLayout:
    """The mesh `mesh_cfg` gives on `device_count` devices spread over `place`'s processes and slices.

    Raises the real run's errors: axes that do not multiply to the device count, a `mesh.dcn`
    that does not fit the slices (or, without slices, the processes).
    """
    sizes = resolve_axis_sizes({axis: getattr(mesh_cfg, axis) for axis in MESH_AXES}, device_count)
    if mesh_cfg.dcn or place.slices > 1:  # when `device_grid` splits axes over DCN, and over which groups
        split_dcn(sizes, mesh_cfg.dcn, place.slices if place.slices > 1 else place.process_count)
    mesh = AbstractMesh(tuple(sizes[axis] for axis in MESH_AXES), MESH_AXES)
    return MeshLayout(sizes, mesh, logical_to_mesh(BATCH_LOGICAL_AXES, make_rules(mesh_cfg.rules), mesh))


def data_shard(layout: MeshLayout, place: ProcessPlace, per_process: int, rows: int) -> tuple[int, int]:
    """(index, count) of the batch row blocks this process feeds, as `distributed.process_rows` finds them.

    Assumes each process's devices are consecutive in the mesh (row-major over MESH_AXES), as on
    GPU clusters and within a TPU host; the real run reads the layout from its devices.
    """
    shape = tuple(layout.sizes[axis] for axis in MESH_AXES)
    coords = np.indices(shape).reshape(len(shape), -1)  # [axis, device in mesh order]
    batch_axes = layout.batch_axes
    block = np.zeros(coords.shape[1], np.int64)
    for axis in batch_axes:  # the first axis of the spec is the slowest-varying part of the row index
        block = block * layout.sizes[axis] + coords[MESH_AXES.index(axis)]
    width = rows // math.prod(layout.sizes[axis] for axis in batch_axes)
    blocks = {}
    for process in range(place.process_count):
        held = set(block[process * per_process : (process + 1) * per_process].tolist())
        blocks[process] = {(b * width, (b + 1) * width) for b in held}
    return row_shard(blocks, rows, place.process_index)
