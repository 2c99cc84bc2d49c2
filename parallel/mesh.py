"""Device meshes built from the `mesh:` config section, on one host, many hosts or many slices."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from scalelab.model.config import ConfigError

# Ordered from least to most communication-hungry, so that the innermost (fastest-varying)
# axis, tensor, lands on the best-connected neighbouring devices.
MESH_AXES = ("pipeline", "data", "fsdp", "tensor")


def resolve_axis_sizes(sizes: dict[str, int], n_devices: int) -> dict[str, int]:
    """Fill in the one -1 axis with the remaining devices and check the product equals the device count."""
    known = math.prod(v for v in sizes.values() if v != -1)
    free = [k for k, v in sizes.items() if v == -1]
    resolved = dict(sizes)
    if free:
        if n_devices % known:
            raise ConfigError(
                f"mesh: the fixed axes multiply to {known}, which does not divide the {n_devices} devices; "
                f"change {', '.join(f'mesh.{k}' for k, v in sizes.items() if v not in (1, -1))}"
            )
        resolved[free[0]] = n_devices // known
    product = math.prod(resolved.values())
    if product != n_devices:
        shape = " x ".join(f"{k}={v}" for k, v in resolved.items())
        raise ConfigError(
            f"mesh: {shape} has {product} devices but {n_devices} are available; "
            "make the product match or set one axis to -1"
        )
    return resolved


def _granules(devices: Sequence[Any]) -> tuple[int, bool]:
    """(number of DCN-connected groups, whether they are processes rather than slices)."""
    slices = {getattr(d, "slice_index", 0) for d in devices}
    if len(slices) > 1:
        return len(slices), False
    return len({d.process_index for d in devices}), True


def split_dcn(sizes: Mapping[str, int], dcn: Mapping[str, int] | None, granules: int) -> dict[str, int]:
    """Ways of each axis that cross the slow network, checked against the number of granules.

    With several slices and no `mesh.dcn`, the slices go to the data axis: data parallelism
    only all-reduces gradients once per step, so it tolerates the slow links best.
    """
    if not dcn:
        if granules == 1:
            return dict.fromkeys(sizes, 1)
        if sizes["data"] % granules:
            raise ConfigError(
                f"the devices form {granules} slices but mesh.data ({sizes['data']}) is not divisible by {granules}; "
                "set mesh.dcn to say which axes span slices, e.g. mesh.dcn={data: 2}"
            )
        dcn = {"data": granules}
    ways = {axis: int(dcn.get(axis, 1)) for axis in sizes}
    for axis, n in ways.items():
        if sizes[axis] % n:
            raise ConfigError(f"mesh.dcn.{axis} ({n}) does not divide mesh.{axis} ({sizes[axis]})")
    if math.prod(ways.values()) != granules:
        raise ConfigError(
            f"mesh.dcn spans {math.prod(ways.values())} slices but the devices form {granules}; "
            "make the product of mesh.dcn match the slice (or process) count"
        )
    return ways


def device_grid(
    sizes: Mapping[str, int], devices: Sequence[Any], dcn: Mapping[str, int] | None = None, whole: bool = True
) -> np.ndarray:
    """Devices arranged in a (pipeline, data, fsdp, tensor) array.

    Across slices (or, without slice ids, across processes when `mesh.dcn` asks for it) the
    DCN part of each axis varies slowest, so only those ways cross the slow network. `whole`
    says `devices` is every device, so the topology-aware layout applies; a subset (a test
    running on a few devices) is laid out in the given order.
    """
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    granules, by_process = _granules(devices)
    if dcn or (granules > 1 and not by_process):
        ways = split_dcn(sizes, dcn, granules)
        dcn_shape = tuple(ways[axis] for axis in MESH_AXES)
        ici_shape = tuple(s // d for s, d in zip(shape, dcn_shape, strict=True))
        return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=by_process)
    if whole:
        return mesh_utils.create_device_mesh(shape, devices)
    return np.asarray(devices).reshape(shape)


def build_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes pipeline, data, fsdp, tensor, in Auto mode.

    Auto axis types let XLA's sharding propagation place intermediates; explicit constraints
    come from the logical-axis rules.
    """
    whole = devices is None or len(devices) == jax.device_count()
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_axis_sizes({axis: getattr(mesh_cfg, axis) for axis in MESH_AXES}, len(devices))
    grid = device_grid(sizes, devices, mesh_cfg.dcn, whole)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
