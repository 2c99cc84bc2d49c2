"""A stack of identical blocks stored with a leading `layers` axis and run by lax.scan.

Scanning keeps compile time flat in depth. The runner that executes the stack is a plain
function of (graphdef, stacked state, x, ...), so parallel/ can swap in a pipelined one.
Decoding runs the stack with a cache stacked like the blocks (`cached_scan_runner`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.model.cache import BlockCache, KeyValues
from scalelab.model.config import ModelConfig

# What every block receives besides x, computed once per forward pass: AttentionInputs, or
# CrossInputs in a T5 decoder. Runners only pass it through, so any pytree works.
BlockInputs = Any

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_saveable,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # save_dots_no_batch's residuals, parked in host memory until the backward pass: accelerator
    # memory of full remat for less recompute, paid in transfers (on a CPU both are the same RAM).
    "offload_dots": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


# A batch as the models read it: `inputs`, and optionally `positions`, `segment_ids` and t5's decoder inputs.
Batch = Mapping[str, jax.Array]


class LayerRunner(Protocol):
    """Runs stacked blocks: (graphdef, stacked state, x, inputs, per-layer keys or None, remat) -> x."""

    def __call__(
        self,
        graphdef: nnx.GraphDef,
        state: nnx.State,
        x: jax.Array,
        inputs: BlockInputs,
        keys: jax.Array | None,
        remat: str,
    ) -> jax.Array: ...


class CachedRunner(Protocol):
    """Runs stacked blocks while decoding: (graphdef, stacked state, x, inputs, stacked cache) -> (x, cache)."""

    def __call__(
        self, graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, inputs: BlockInputs, cache: BlockCache
    ) -> tuple[jax.Array, BlockCache]: ...


def block_fn(graphdef: nnx.GraphDef, remat: str) -> Callable:
    """f(x, layer_state, inputs, key) -> x for one block, wrapped in jax.checkpoint per `remat`."""

    def apply(x: jax.Array, layer_state: nnx.State, inputs: BlockInputs, key: jax.Array | None) -> jax.Array:
        return nnx.merge(graphdef, layer_state)(x, inputs, key)

    if remat == "none":
        return apply
    return jax.checkpoint(apply, policy=REMAT_POLICIES[remat], prevent_cse=False)


# Stacks up to this deep run loop-free (the scan fully unrolled) when nothing is rematerialised
# and model.unroll_max_layers does not say otherwise. A loop-free step is faster everywhere; what
# the loop buys is compile time that stays flat in depth. In the loop XLA copies every layer's
# weights and gradients out of and into the stacks and zero-fills the stacked residuals. On a CPU
# those copies run as slow elementwise kernels: unrolled, d_model 1024 x 12 layers steps 1.5x faster
# (3.4 s against 5.2) for twice the compile time (7 s against 3.6). On an H200 they are 26 ms of the
# gpt-1b rung's 241 ms step (18 layers, batch 8 x 2048): unrolled it steps in 215 ms (MFU 48% -> 54%)
# for 15 s of compile against 12 s and 41 GB of scratch memory against 31. A GPU therefore unrolls
# stacks up to 32 deep, where compile time still repays itself within a few hundred steps. TPUs are
# unmeasured and keep the loop from 5 layers up. With remat the loop always stays: in straight-line
# code XLA may merge the recomputation back into the forward pass.
DEFAULT_UNROLL_MAX_LAYERS = {"cpu": 16, "gpu": 32}
UNMEASURED_UNROLL_MAX_LAYERS = 4  # a platform with no entry above (TPUs)


def unroll_max_layers(configured: int | None) -> int:
    """The deepest stack run loop-free: `configured` (model.unroll_max_layers), else the platform's default."""
    if configured is not None:
        return configured
    return DEFAULT_UNROLL_MAX_LAYERS.get(jax.default_backend(), UNMEASURED_UNROLL_MAX_LAYERS)


def scan_runner(graphdef, state, x, inputs, keys, remat, unroll_max: int | None = None):
    """Run the layers in order with lax.scan over the leading axis, unrolled up to `unroll_max` layers."""
    apply = block_fn(graphdef, remat)
    n_layers = jax.tree.leaves(state)[0].shape[0]

    def body(carry, layer):
        layer_state, key = layer
        return apply(carry, layer_state, inputs, key), None

    unroll = remat == "none" and n_layers <= unroll_max_layers(unroll_max)
    x, _ = jax.lax.scan(body, x, (state, keys), unroll=unroll)
    return x


def unrolled_runner(graphdef, state, x, inputs, keys, remat):
    """Run the layers in order with a Python loop (for tests and debugging)."""
    apply = block_fn(graphdef, remat)
    n_layers = jax.tree.leaves(state)[0].shape[0]
    for i in range(n_layers):
        layer_state = jax.tree.map(lambda a, i=i: a[i], state)
        x = apply(x, layer_state, inputs, None if keys is None else keys[i])
    return x


def cached_scan_runner(graphdef, state, x, inputs, cache):
    """Decoding: the layers in order over new tokens x with lax.scan, layer i reading and writing its slice of
    the stacked `cache` (see KeyValues). Returns (x, the cache).

    Quantized weights (inference/quantize.py) need nothing here: the scan slices their stacked values
    and scales like any other array, and each weight widens itself inside its own matmul
    (model/layers.py), so only one layer is ever widened at a time."""
    n_layers = jax.tree.leaves(state)[0].shape[0]

    def body(carry, layer):
        x, cache = carry
        weights, index = layer
        block = nnx.merge(graphdef, weights)
        x, cache = block(x, inputs, None, cache=cache.map(lambda kv: kv.at(index)))
        return (x, cache.map(lambda kv: kv.at(None))), None

    held = cache.map(KeyValues.as_bits)
    (x, held), _ = jax.lax.scan(body, (x, held), (state, jnp.arange(n_layers)))
    return x, held.map(KeyValues.as_values)


def prepend_axis(module: nnx.Module, name: str) -> None:
    """Record a new leading logical axis on every parameter of `module`."""
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable) and hasattr(node, "axes"):
            node.set_metadata("axes", (name, *node.axes))


class LayerStack(nnx.Module):
    """n_layers (default cfg.n_layers) copies of `block_cls`, parameters stacked along a leading `layers` axis."""

    def __init__(self, cfg: ModelConfig, block_cls: type[nnx.Module], *, rngs: nnx.Rngs, n_layers: int | None = None):
        self.n_layers = n_layers or cfg.n_layers
        self.remat = cfg.remat
        self.runner: LayerRunner = (
            functools.partial(scan_runner, unroll_max=cfg.unroll_max_layers) if cfg.scan_layers else unrolled_runner
        )

        @nnx.split_rngs(splits=self.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(layer_rngs: nnx.Rngs) -> nnx.Module:
            return block_cls(cfg, rngs=layer_rngs)

        self.blocks = make(rngs)
        prepend_axis(self.blocks, "layers")

    def __call__(
        self,
        x: jax.Array,
        inputs: BlockInputs,
        dropout_key: jax.Array | None,
        runner: LayerRunner | CachedRunner | None = None,
        cache: BlockCache | None = None,
    ) -> jax.Array | tuple[jax.Array, BlockCache]:
        """Apply every block in order; `runner` overrides how (e.g. a pipeline schedule).

        Decoding passes the stacked `cache` and gets (x, the updated cache); `runner` is then a
        CachedRunner (default: cached_scan_runner).
        """
        graphdef, state = nnx.split(self.blocks)
        if cache is not None:
            return (runner or cached_scan_runner)(graphdef, state, x, inputs, cache)
        keys = None if dropout_key is None else jax.random.split(dropout_key, self.n_layers)
        return (runner or self.runner)(graphdef, state, x, inputs, keys, self.remat)
