"""The pipeline schedule: its plan, the stage layout of the layers, and the runner's forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from scalelab.model.axes import activation_sharding
from scalelab.model.config import ConfigError, ModelConfig
from scalelab.model.functional import describe
from scalelab.parallel.config import MeshConfig
from scalelab.parallel.mesh import build_mesh
from scalelab.parallel.pipeline import make_pipeline_runner, stage_layout
from scalelab.parallel.pipeline_plan import PipelinePlan, plan_pipeline
from scalelab.parallel.rules import activation_resolver, make_rules, tree_shardings
from tests.parallel.helpers import FAST_COMPILE


def test_bubble_fractions_follow_the_schedules():
    gpipe = PipelinePlan(stages=4, repeats=1, microbatches=8, n_layers=8, schedule="gpipe")
    assert gpipe.iterations == 11
    assert gpipe.bubble == pytest.approx(3 / 11)
    circular = PipelinePlan(stages=4, repeats=2, microbatches=8, n_layers=8, schedule="circular")
    assert circular.iterations == 19
    assert circular.bubble == pytest.approx(3 / 19)  # the same fill and drain, over twice the items
    assert "bubble 15.8%" in circular.describe()


def test_circular_defaults_to_one_layer_per_group():
    model = ModelConfig(n_layers=8)
    plan = plan_pipeline(MeshConfig(pipeline=2, microbatches=2, schedule="circular"), model, stages=2)
    assert (plan.repeats, plan.layers_per_group) == (4, 1)
    plan = plan_pipeline(MeshConfig(pipeline=2, microbatches=2, schedule="circular", repeats=2), model, stages=2)
    assert (plan.repeats, plan.layers_per_group) == (2, 2)
    assert plan_pipeline(MeshConfig(pipeline=2), model, stages=2).repeats == 1


@pytest.mark.parametrize(
    ("mesh", "n_layers", "message"),
    [
        ({"pipeline": 4}, 6, r"model\.n_layers \(6\) is not divisible by mesh\.pipeline \(4\)"),
        (
            {"pipeline": 2, "microbatches": 2, "schedule": "circular", "repeats": 3},
            8,
            r"model\.n_layers \(8\) is not divisible by mesh\.pipeline x mesh\.repeats \(2 x 3 = 6\)",
        ),
        (
            {"pipeline": 4, "microbatches": 2, "schedule": "circular"},
            8,
            r"mesh\.microbatches \(2\) must be at least mesh\.pipeline \(4\)",
        ),
        ({"pipeline": 2, "repeats": 2}, 8, r"mesh\.repeats \(2\) needs mesh\.schedule=circular"),
    ],
)
def test_bad_pipeline_settings_name_both_numbers(mesh, n_layers, message):
    with pytest.raises(ConfigError, match=message):
        plan_pipeline(MeshConfig(**mesh), ModelConfig(n_layers=n_layers), stages=mesh["pipeline"])


def test_stage_layout_puts_non_adjacent_groups_on_each_stage():
    plan = PipelinePlan(stages=2, repeats=2, microbatches=2, n_layers=8, schedule="circular")
    layout = np.asarray(stage_layout(jnp.arange(8), plan))
    # [stage, repeat, layer in group]: stage 0 holds groups 0 and 2, stage 1 groups 1 and 3.
    np.testing.assert_array_equal(layout, [[[0, 1], [4, 5]], [[2, 3], [6, 7]]])
    gpipe = PipelinePlan(stages=2, repeats=1, microbatches=2, n_layers=8, schedule="gpipe")
    np.testing.assert_array_equal(np.asarray(stage_layout(jnp.arange(8), gpipe))[:, 0], [[0, 1, 2, 3], [4, 5, 6, 7]])


@pytest.mark.parametrize(
    "mesh",
    [
        MeshConfig(data=4, pipeline=2, microbatches=2, schedule="gpipe"),
        # 4 microbatches on 2 stages: outputs wait in the buffer before their next repeat.
        MeshConfig(data=1, tensor=2, pipeline=2, fsdp=2, microbatches=4, schedule="circular", repeats=2),
    ],
    ids=["gpipe", "circular"],
)
def test_pipelined_forward_matches_the_scan_with_packed_segments(mesh):
    cfg = ModelConfig(d_model=32, n_layers=4, n_heads=4, vocab_size=64, max_seq_len=16, dtype="float32")
    model = describe(cfg)
    params = jax.jit(lambda: model.init(0)).lower().compile(FAST_COMPILE)()
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 64)
    # Packed rows give each example its own attention mask, which must follow it through the stages.
    segments = jnp.cumsum(jax.random.bernoulli(jax.random.key(2), 0.2, (8, 16)), axis=1)
    batch = {"inputs": tokens, "segment_ids": segments}
    expected = jax.jit(model.apply).lower(params, batch).compile(FAST_COMPILE)(params, batch)

    device_mesh = build_mesh(mesh)
    rules = make_rules()
    runner = make_pipeline_runner(plan_pipeline(mesh, cfg, mesh.pipeline), device_mesh, rules)

    def forward(p, b):
        with activation_sharding(activation_resolver(rules, device_mesh)):
            return model.apply(p, b, runner=runner)

    shardings = tree_shardings(model.axes, model.shapes, rules, device_mesh)
    batch_sharding = NamedSharding(device_mesh, PartitionSpec(("data", "fsdp")))
    pipelined = jax.jit(forward, in_shardings=(shardings, batch_sharding)).lower(params, batch)
    got = pipelined.compile(FAST_COMPILE)(params, batch)
    np.testing.assert_allclose(got, expected, atol=2e-6)
