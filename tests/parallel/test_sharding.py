"""Parameters, optimizer state and the batch carry the shardings the rules promise, leaf by leaf."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from scalelab.data import make_source
from scalelab.train.trainer import Trainer
from tests.parallel.helpers import FAST_COMPILE, initial_state, tiny_config

P = PartitionSpec

# fsdp splits every weight's embed dimension, tensor its heads / MLP hidden / vocabulary
# (column-parallel in, row-parallel out), pipeline the stacked layer axis.
EXPECTED_3D = {
    "['embed']": P("tensor", "fsdp"),
    "['final_norm']['scale']": P("fsdp"),
    "['layers']['blocks']['attn']['wq']": P("pipeline", "fsdp", "tensor", None),
    "['layers']['blocks']['attn']['wk']": P("pipeline", "fsdp", "tensor", None),
    "['layers']['blocks']['attn']['wv']": P("pipeline", "fsdp", "tensor", None),
    "['layers']['blocks']['attn']['wo']": P("pipeline", "tensor", None, "fsdp"),
    "['layers']['blocks']['attn_norm']['scale']": P("pipeline", "fsdp"),
    "['layers']['blocks']['ffn']['w_in']": P("pipeline", "fsdp", "tensor"),
    "['layers']['blocks']['ffn']['w_out']": P("pipeline", "tensor", "fsdp"),
    "['layers']['blocks']['ffn_norm']['scale']": P("pipeline", "fsdp"),
}


def placed(mesh: dict, *overrides: str):
    """(trainer, shared initial state placed in the trainer's shardings) for a mesh."""
    cfg = tiny_config(mesh, *overrides)
    trainer = Trainer.build(cfg)
    return trainer, jax.device_put(initial_state(cfg.model), trainer.state_shardings)


def by_path(tree) -> dict[str, jax.Array]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def adam_moments(opt_state) -> list[dict[str, jax.Array]]:
    """The parameter-shaped trees in the optimizer state: Adam's mu and nu."""
    nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
    adam = [node for node in nodes if isinstance(node, optax.ScaleByAdamState)]
    return [by_path(tree) for node in adam for tree in (node.mu, node.nu)]


def test_fsdp_tensor_pipeline_shardings_per_leaf():
    trainer, state = placed({"data": 1, "fsdp": 2, "tensor": 2, "pipeline": 2, "microbatches": 2})
    mesh = trainer.mesh
    params = by_path(state["params"])
    assert set(params) == set(EXPECTED_3D)
    for path, spec in EXPECTED_3D.items():
        assert params[path].sharding.is_equivalent_to(NamedSharding(mesh, spec), params[path].ndim), path
    wq = params["['layers']['blocks']['attn']['wq']"]  # (layers 8, embed 64, heads 8, head_dim 8)
    assert wq.addressable_shards[0].data.shape == (4, 32, 4, 8)
    moments = adam_moments(state["opt_state"])
    assert len(moments) == 2
    for moment in moments:
        for path, spec in EXPECTED_3D.items():
            assert moment[path].sharding.is_equivalent_to(NamedSharding(mesh, spec), moment[path].ndim), path
    scalars = [leaf for leaf in jax.tree.leaves(state["opt_state"]) if leaf.ndim == 0]
    assert scalars and all(leaf.sharding.is_fully_replicated for leaf in scalars)
    assert trainer.batch_sharding.spec == P("fsdp", None)


def test_data_parallel_replicates_params_and_optimizer_state():
    trainer, state = placed({"data": 8})
    for leaf in jax.tree.leaves((state["params"], state["opt_state"])):
        assert leaf.sharding.is_fully_replicated
    assert trainer.batch_sharding.spec == P("data", None)


def _bytes_per_device(tree) -> int:
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))


def _bytes_total(tree) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree))


def test_fsdp_cuts_param_and_optimizer_bytes_per_device_eightfold():
    _, state = placed({"data": 1, "fsdp": 8})
    # Every weight has an embed dimension, so parameters split exactly 8 ways.
    assert _bytes_per_device(state["params"]) * 8 == _bytes_total(state["params"])
    # Adam's moments split the same way; only its step counters (a few bytes) are replicated.
    opt_total, opt_device = _bytes_total(state["opt_state"]), _bytes_per_device(state["opt_state"])
    assert opt_device * 8 == pytest.approx(opt_total, rel=1e-4)


def test_rules_override_from_config():
    # mesh.rules.embed=null turns off the ZeRO-3 split: fsdp then only splits the batch.
    _, state = placed({"data": 1, "fsdp": 8}, "mesh.rules={embed: null}")
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state["params"]))


def test_sharded_initialisation_equals_single_device():
    trainer, _ = placed({"data": 1, "fsdp": 2, "tensor": 2, "pipeline": 2, "microbatches": 2})
    fresh = jax.device_get(trainer.init_state())
    reference = initial_state(trainer.cfg.model)
    for got, want in zip(jax.tree.leaves(fresh), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_no_activation_is_resharded_by_replicating_it(capfd, family):
    # XLA warns of an "involuntary full rematerialization" when it can reach a sharding only by
    # replicating the whole array first. The token lookup did that on FSDP x tensor meshes, from a
    # table split over d_model to activations split over the batch. A vocabulary no other test
    # uses, so the step is compiled here and not found in JAX's cache.
    cfg = tiny_config({"data": 2, "fsdp": 2, "tensor": 2}, f"model.family={family}", "model.vocab_size=264")
    trainer = Trainer.build(cfg)
    batch = trainer.put_batch(make_source(cfg, *trainer.data_shard()).batch(0))
    state = trainer.abstract_state()
    trainer.compile(state, batch, FAST_COMPILE)
    trainer.eval_step.lower(state["params"], batch).compile(FAST_COMPILE)
    assert "Involuntary full rematerialization" not in capfd.readouterr().err
