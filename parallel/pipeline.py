"""Pipeline parallelism: the stacked layers split into stages over the `pipeline` mesh axis.

The schedule is written as a loop over iterations in which every stage runs at once, as a
`jax.vmap` over a leading stage dimension that is sharded over `pipeline` (so each device
computes only its own stage), and activations move to the next stage with a roll along
that dimension (a collective permute). GSPMD keeps the data, fsdp and tensor axes working
inside each stage, so the pipeline composes with them and with per-layer remat.

One loop covers both schedules. The model's L layers form G = stages * repeats groups of
L / G consecutive layers; group g runs on stage g % stages. GPipe is repeats = 1 (each stage
holds one contiguous block); circular (interleaved) has repeats > 1, so each stage holds
`repeats` non-adjacent groups and every microbatch loops around the stages `repeats` times.
Item k = repeat * microbatches + microbatch enters stage 0 at iteration k and stage s at
iteration k + s; the last stage writes its output back into the microbatch's slot of a
buffer that also holds the fresh inputs, from which stage 0 reads the next repeat.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalelab.model.config import ConfigError
from scalelab.model.layers import AttentionInputs
from scalelab.model.stack import LayerRunner, block_fn
from scalelab.parallel.pipeline_plan import PipelinePlan
from scalelab.parallel.rules import MeshAxes, logical_to_mesh


def stage_layout(array: jax.Array, plan: PipelinePlan) -> jax.Array:
    """(n_layers, ...) in model order -> (stages, repeats, layers_per_group, ...): [s, r, j] is
    layer (r * stages + s) * layers_per_group + j."""
    grouped = array.reshape(plan.repeats, plan.stages, plan.layers_per_group, *array.shape[1:])
    return jnp.swapaxes(grouped, 0, 1)


def _split_microbatches(x: jax.Array, count: int) -> jax.Array:
    # Microbatch m takes rows m, m + count, ...: a device's contiguous rows of the batch then
    # hold its rows of every microbatch, so splitting moves no data between devices.
    return x.reshape(x.shape[0] // count, count, *x.shape[1:])


def _merge_microbatches(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def make_pipeline_runner(plan: PipelinePlan, mesh: Mesh, rules: dict[str, MeshAxes]) -> LayerRunner:
    """A LayerRunner that runs the stacked layers as `plan` describes on `mesh`."""
    stage_spec = logical_to_mesh(PartitionSpec("stage"), rules, mesh)
    stage_axis = stage_spec[0]
    activation_spec = logical_to_mesh(PartitionSpec("stage", "batch", "length", "embed"), rules, mesh)
    activations = NamedSharding(mesh, activation_spec)
    S, R, M = plan.stages, plan.repeats, plan.microbatches

    def constrain_stage_params(a: jax.Array) -> jax.Array:
        # Pin only the stage dimension; the rules already placed the others (fsdp, tensor).
        spec = PartitionSpec(stage_axis, *([PartitionSpec.UNCONSTRAINED] * (a.ndim - 1)))
        return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))

    def run(
        graphdef: nnx.GraphDef,
        state: nnx.State,
        x: jax.Array,
        inputs: AttentionInputs,
        keys: jax.Array | None,
        remat: str,
    ) -> jax.Array:
        apply = block_fn(graphdef, remat)
        batch = x.shape[0]
        if batch % M:
            raise ConfigError(f"batch of {batch} rows is not divisible by mesh.microbatches ({M})")
        params = jax.tree.map(lambda a: constrain_stage_params(stage_layout(a, plan)), state)
        # Per-example attention inputs (masks, rotary tables) are split like x; broadcast ones are shared.
        per_example = jax.tree.map(lambda a: a.ndim > 0 and a.shape[0] == batch, inputs)
        micro_inputs = jax.tree.map(lambda a, split: _split_microbatches(a, M) if split else a, inputs, per_example)
        stage_ids = jnp.arange(S)

        def stage(stage_params, stage_id, item, x_in):
            """Run one stage's group of layers for `item` (repeat * M + microbatch) on x_in."""
            repeat, micro = jnp.clip(item // M, 0, R - 1), item % M
            group = jax.tree.map(lambda a: a[repeat], stage_params)
            own_inputs = jax.tree.map(lambda a, split: a[:, micro] if split else a, micro_inputs, per_example)
            first_layer = (repeat * S + stage_id) * plan.layers_per_group

            def body(h, layer):
                layer_state, offset = layer
                # Each microbatch draws its own dropout mask from the layer's key.
                key = None if keys is None else jax.random.fold_in(keys[first_layer + offset], micro)
                return apply(h, layer_state, own_inputs, key), None

            h, _ = jax.lax.scan(body, x_in, (group, jnp.arange(plan.layers_per_group)))
            return h

        run_stages = jax.vmap(stage, spmd_axis_name=stage_axis)

        def iteration(carry, t):
            stage_in, buffer = carry
            items = t - stage_ids
            # Stage 0 reads a fresh microbatch (first repeat) or the last stage's earlier output.
            fresh = jax.lax.dynamic_index_in_dim(buffer, items[0] % M, axis=1, keepdims=False)
            first = (stage_ids == 0).reshape(S, *([1] * fresh.ndim))
            stage_in = jax.lax.with_sharding_constraint(jnp.where(first, fresh[None], stage_in), activations)
            out = jax.lax.with_sharding_constraint(run_stages(params, stage_ids, items, stage_in), activations)
            done = items[-1]
            slot = done % M
            previous = jax.lax.dynamic_index_in_dim(buffer, slot, axis=1, keepdims=False)
            finished = jnp.where((done >= 0) & (done < M * R), out[-1], previous)
            buffer = jax.lax.dynamic_update_index_in_dim(buffer, finished, slot, axis=1)
            return (jnp.roll(out, 1, axis=0), buffer), None

        buffer = _split_microbatches(x, M)
        stage_in = jax.lax.with_sharding_constraint(jnp.zeros((S, *buffer[:, 0].shape), x.dtype), activations)
        (_, buffer), _ = jax.lax.scan(iteration, (stage_in, buffer), jnp.arange(plan.iterations))
        return _merge_microbatches(buffer)

    return run
