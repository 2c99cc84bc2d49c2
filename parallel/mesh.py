"""Device meshes built from the `mesh:` config section."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from model.config import ConfigError

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
                f"change {', '.join(f'mesh.{k}' for k in sizes if k not in free)}"
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


def build_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes pipeline, data, fsdp, tensor, in Auto mode.

    Auto axis types let XLA's sharding propagation place intermediates; explicit constraints
    come from the logical-axis rules.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_axis_sizes({axis: getattr(mesh_cfg, axis) for axis in MESH_AXES}, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    if len(devices) == len(jax.devices()) and jax.process_count() == 1:
        grid = jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
        return grid
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
