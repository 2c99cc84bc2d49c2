"""Logical-to-mesh axis rules: the one table that decides how everything is sharded.

Parameters and activations are named with logical axes in model/; these rules map each
logical name to zero or more mesh axes. A config can override entries (`mesh.rules`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalelab.model.config import ConfigError
from scalelab.parallel.mesh import MESH_AXES

MeshAxes = tuple[str, ...]

# Data and FSDP both split the batch; FSDP also splits the embedding dimension of every
# weight (ZeRO-3); tensor splits heads, the MLP hidden dimension and the vocabulary
# (Megatron column/row); the stacked layer axis is split into contiguous blocks over the
# pipeline, which parallel/pipeline.py regroups into stages. An axis of size 1 drops out,
# so the same table serves every mesh.
DEFAULT_RULES: dict[str, MeshAxes] = {
    "batch": ("data", "fsdp"),
    "length": (),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "positions": (),
    "relative_buckets": (),
    "classes": (),
    "layers": ("pipeline",),
    "stage": ("pipeline",),
}


def make_rules(overrides: Mapping[str, Any] | None = None) -> dict[str, MeshAxes]:
    """The default rules with `overrides` applied (a value may be a mesh axis, a list of them, or null)."""
    rules = dict(DEFAULT_RULES)
    for name, value in (overrides or {}).items():
        if name not in DEFAULT_RULES:
            close = difflib.get_close_matches(str(name), list(DEFAULT_RULES), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"mesh.rules: unknown logical axis {name!r}; {hint}the logical axes are {', '.join(DEFAULT_RULES)}"
            )
        if value is None:
            rules[name] = ()
        elif isinstance(value, str):
            rules[name] = (value,)
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            rules[name] = tuple(value)
        else:
            raise ConfigError(f"mesh.rules.{name}: expected a mesh axis name, a list of them or null, got {value!r}")
        # An unknown mesh axis would silently act as null: the axis would not be split at all.
        for axis in rules[name]:
            if axis not in MESH_AXES:
                raise ConfigError(
                    f"mesh.rules.{name}: unknown mesh axis {axis!r}; use {', '.join(MESH_AXES)}, a list of them, or null"
                )
    return rules


def logical_to_mesh(spec: PartitionSpec, rules: Mapping[str, MeshAxes], mesh: Mesh) -> PartitionSpec:
    """Map a spec of logical names to mesh axes; size-1 axes are dropped and no mesh axis is used twice."""
    used: set[str] = set()
    out = []
    for name in spec:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise ConfigError(f"no sharding rule for logical axis {name!r}; add it to mesh.rules")
        axes = tuple(a for a in rules[name] if a not in used and mesh.shape.get(a, 1) > 1)
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*out)


# The config key that sets the size of each logical axis, for error messages.
AXIS_SOURCES: dict[str, str] = {
    "batch": "train.batch_size",
    "length": "train.seq_len",
    "embed": "model.d_model",
    "heads": "model.n_heads",
    "kv_heads": "model.n_kv_heads (model.n_heads if unset)",
    "head_dim": "model.head_dim (d_model / n_heads if unset)",
    "mlp": "model.d_ff (ffn_multiplier x d_model if unset)",
    "vocab": "model.vocab_size",
    "positions": "model.max_seq_len",
    "layers": "model.n_layers",
}


def check_divisible(
    shape: tuple[int, ...],
    spec: PartitionSpec,
    mesh: Mesh,
    what: str,
    labels: tuple[str | None, ...] = (),
    fix: str = "change the mesh or the model, or override mesh.rules",
) -> None:
    """Raise naming both numbers when mesh axes do not divide the dimension they shard.

    `labels` name each dimension for the message, ideally by the config key that sets it; `fix` says what to change.
    """
    padded = tuple(spec) + (None,) * (len(shape) - len(spec))
    labels = tuple(labels) + (None,) * (len(shape) - len(labels))
    for dim, (size, axes, label) in enumerate(zip(shape, padded, labels, strict=True)):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        ways = math.prod(mesh.shape[axis] for axis in axes)
        if size % ways == 0:
            continue
        sizes = " x ".join(str(mesh.shape[axis]) for axis in axes) + (f" = {ways}" if len(axes) > 1 else "")
        raise ConfigError(
            f"{label or f'dimension {dim}'} ({size}) is not divisible by "
            f"{' x '.join(f'mesh.{axis}' for axis in axes)} ({sizes}), over which {what} is sharded; {fix}"
        )


def tree_shardings(
    logical: Any, shapes: Any, rules: Mapping[str, MeshAxes], mesh: Mesh, what: str = "parameter"
) -> Any:
    """NamedShardings for a tree of logical PartitionSpecs, checked against the matching shapes."""

    def one(path, spec, shape):
        mesh_spec = logical_to_mesh(spec, rules, mesh)
        labels = tuple(AXIS_SOURCES.get(name, name) if name else None for name in spec)
        check_divisible(tuple(shape.shape), mesh_spec, mesh, f"{what} {jax.tree_util.keystr(path)}", labels)
        return NamedSharding(mesh, mesh_spec)

    return jax.tree_util.tree_map_with_path(one, logical, shapes)


class ActivationRules:
    """The model.axes resolver of a mesh: activations constrained to their rule-given sharding, and
    per-shard kernels mapped over the mesh with the same rules."""

    def __init__(self, rules: Mapping[str, MeshAxes], mesh: Mesh) -> None:
        self.rules, self.mesh = rules, mesh

    def spec(self, axes: tuple[str | None, ...]) -> PartitionSpec:
        return logical_to_mesh(PartitionSpec(*axes), self.rules, self.mesh)

    def __call__(self, x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, self.spec(axes)))

    def per_shard(self, fn, in_axes: tuple[tuple[str | None, ...], ...], out_axes: tuple[str | None, ...]):
        if self.mesh.shape.get("pipeline", 1) > 1:
            return fn  # pipeline stages run under a vmap over the pipeline axis: left to the compiler
        return jax.shard_map(
            fn,
            mesh=self.mesh,
            in_specs=tuple(self.spec(axes) for axes in in_axes),
            out_specs=self.spec(out_axes),
            check_vma=False,  # a Pallas call carries no varying-axes types
        )


def activation_resolver(rules: Mapping[str, MeshAxes], mesh: Mesh) -> ActivationRules:
    """A model.axes resolver that constrains activations to their rule-given sharding."""
    return ActivationRules(rules, mesh)
