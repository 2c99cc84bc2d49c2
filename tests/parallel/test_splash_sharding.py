"""Splash attention on a mesh: each device runs the Pallas kernel on its own rows and heads.

A Pallas call is opaque to XLA's partitioner. Under the rules' activation resolver the kernel runs
in a shard_map, rows split like the batch (data x fsdp) and heads like the tensor axis, so the
program gathers no query, key or value, and its values and gradients equal einsum's on one device.
Runs in Pallas's interpret mode on the 8 simulated CPU devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from scalelab.model.attention import attend, self_attention_inputs
from scalelab.model.axes import activation_sharding
from scalelab.model.masks import KernelRequest, LocalGlobal
from scalelab.parallel.config import MeshConfig
from scalelab.parallel.mesh import build_mesh
from scalelab.parallel.rules import activation_resolver, make_rules

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 4, 128, 4, 2, 8
PATTERN = LocalGlobal(True, 32, 2)


def _attention(name: str):
    pattern = dataclasses.replace(PATTERN, kernel=KernelRequest(name, "float32", HEAD_DIM))
    segments = np.broadcast_to(np.arange(LENGTH) // 40, (BATCH, LENGTH)).astype(np.int32)  # 4 packed documents

    def loss(q, k, v, weights):
        inputs = self_attention_inputs(pattern, LENGTH, jnp.asarray(segments), None, lambda offsets: None)
        out = attend(q, k, v, inputs, jnp.float32)
        return jnp.sum(out * weights), out

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)


def test_splash_runs_per_shard_on_a_data_fsdp_tensor_mesh_and_equals_einsum(monkeypatch):
    monkeypatch.setenv("SCALELAB_PALLAS_INTERPRET", "1")
    rng = np.random.default_rng(0)
    q, weights = (rng.standard_normal((BATCH, LENGTH, HEADS, HEAD_DIM), np.float32) for _ in range(2))
    k, v = (rng.standard_normal((BATCH, LENGTH, KV_HEADS, HEAD_DIM), np.float32) for _ in range(2))

    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rules = make_rules()
    resolver = activation_resolver(rules, mesh)
    heads = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, "tensor", None))

    def sharded(*args):
        with activation_sharding(resolver):
            return _attention("splash")(*args)

    step = jax.jit(sharded, in_shardings=(heads, heads, heads, heads))
    program = step.lower(q, k, v, weights).compile().as_text()
    (_, out), grads = step(q, k, v, weights)
    (_, want), want_grads = jax.jit(_attention("einsum"))(q, k, v, weights)

    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
    for got, expected in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)
    assert out.sharding.spec == heads.spec  # the output stays split by rows and heads
    # Every input is already split as the kernel wants it: nothing is gathered or moved for it.
    assert "all-gather" not in program and "all-to-all" not in program and "collective-permute" not in program


def test_under_pipeline_stages_splash_is_left_to_the_compiler():
    mesh = build_mesh(MeshConfig(pipeline=2, data=4))
    resolver = activation_resolver(make_rules(), mesh)

    def kernel(x):
        return x

    assert resolver.per_shard(kernel, (("batch",),), ("batch",)) is kernel
