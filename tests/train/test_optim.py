"""Learning-rate schedules, gradient clipping and the weight-decay mask."""

import jax
import numpy as np
import optax
import pytest

from scalelab.model.functional import describe
from scalelab.train.config_io import load_config
from scalelab.train.optim import clip_by_global_norm, decay_mask, learning_rate


def _lr(name: str, steps=100, warmup=10, **extra):
    overrides = [f"schedule.name={name}", f"train.steps={steps}", f"schedule.warmup_steps={warmup}", "optimizer.lr=1.0"]
    overrides += [f"schedule.{k}={v}" for k, v in extra.items()]
    schedule = learning_rate(load_config("gpt-tiny", overrides))
    return np.array([float(schedule(s)) for s in range(steps)])


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "wsd"])
def test_warmup_is_linear_to_the_peak(name):
    lr = _lr(name)
    np.testing.assert_allclose(lr[:10], np.arange(1, 11) / 10, rtol=1e-6)


def test_decays_reach_the_floor_with_their_shapes():
    cosine, linear, constant = _lr("cosine"), _lr("linear"), _lr("constant")
    assert cosine[-1] == pytest.approx(0.1, abs=1e-3) and linear[-1] == pytest.approx(0.1, abs=1e-2)
    assert cosine[30] > linear[30] and cosine[80] < linear[80]  # cosine is above linear early, below late
    np.testing.assert_allclose(constant[10:], 1.0)


def test_warmup_stable_decay_holds_then_decays():
    lr = _lr("wsd", decay_fraction=0.2)
    np.testing.assert_allclose(lr[10:80], 1.0)
    assert np.all(np.diff(lr[80:]) < 0) and lr[-1] == pytest.approx(0.1, abs=1e-2)
    np.testing.assert_array_equal(_lr("wsd", decay_fraction=0.0), _lr("constant"))  # a sweep trunk's schedule


def _gradients(norm: float) -> dict:
    rng = np.random.default_rng(0)
    tree = {"w": rng.normal(size=(4, 8, 16)), "b": rng.normal(size=(16,)), "layers": [rng.normal(size=(3, 5))]}
    scale = norm / np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(tree)))
    return jax.tree.map(lambda x: jax.numpy.asarray(x * scale, jax.numpy.float32), tree)


@pytest.mark.parametrize("norm", [0.3, 2.5, 40.0])
def test_clipping_matches_optax_and_caps_the_global_norm(norm):
    grads = _gradients(norm)
    ours, state = clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    reference, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    assert state == optax.EmptyState()  # the same state as optax's, so checkpoints keep their layout
    for mine, theirs in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6)
    assert float(optax.tree.norm(ours)) == pytest.approx(min(norm, 1.0), rel=1e-5)
    if norm < 1.0:  # below the cap the gradients pass through bit for bit
        for mine, given in zip(jax.tree.leaves(ours), jax.tree.leaves(grads), strict=True):
            np.testing.assert_array_equal(mine, given)


def test_decay_skips_biases_norms_and_embeddings_unless_asked():
    cfg = load_config("gpt-tiny", ["model.use_bias=true", "model.position=learned"])
    axes = describe(cfg.model).axes
    mask = decay_mask(axes, decay_embeddings=False)
    assert not mask["embed"] and not mask["positions"]["table"]
    assert not mask["final_norm"]["scale"]
    blocks = mask["layers"]["blocks"]
    assert blocks["attn"]["wq"] and not blocks["attn"]["bq"] and not blocks["attn_norm"]["scale"]
    assert blocks["ffn"]["w_in"] and not blocks["ffn"]["b_in"]
    assert decay_mask(axes, decay_embeddings=True)["embed"]
    assert sum(jax.tree.leaves(mask)) == 6  # wq, wk, wv, wo, w_in, w_out


def test_runs_that_differ_in_length_or_learning_rate_compile_to_one_program():
    # The schedule's numbers are arguments of the train step, so a sweep's runs of one shape share a
    # program that the persistent compilation cache serves after the first; the optimizer's state
    # layout does not change with them either, so checkpoints stay compatible.
    from scalelab.data import make_source
    from scalelab.train.trainer import Trainer

    def lowered(*overrides):
        trainer = Trainer.build(load_config("gpt-tiny", ["schedule.name=wsd", *overrides]))
        batch = trainer.put_batch(make_source(trainer.cfg, *trainer.data_shard()).batch(0))
        return trainer.lower(trainer.abstract_state(), batch).as_text()

    one = lowered("train.steps=100", "schedule.warmup_steps=10")
    assert lowered("train.steps=900", "schedule.warmup_steps=40", "optimizer.lr=0.01", "schedule.min_lr_ratio=0") == one
    assert lowered("train.steps=100", "schedule.warmup_steps=10", "optimizer.b2=0.9") != one  # b2 is in the program


def test_the_train_step_reports_the_schedule_it_was_given():
    from scalelab.data import make_source
    from scalelab.train.trainer import Trainer

    cfg = load_config("gpt-tiny", ["schedule.name=wsd", "train.steps=6", "schedule.warmup_steps=2", "optimizer.lr=0.5"])
    trainer = Trainer.build(cfg)
    source, state = make_source(cfg, *trainer.data_shard()), trainer.init_state()
    reported = []
    for step in range(cfg.train.steps):
        state, metrics = trainer.train_step(state, trainer.put_batch(source.batch(step)))
        reported.append(float(metrics["lr"]))
    np.testing.assert_allclose(reported, [float(learning_rate(cfg)(s)) for s in range(6)], rtol=1e-7)
    np.testing.assert_allclose(reported, [0.25, 0.5, 0.5, 0.5, 0.5, 0.05], rtol=1e-6)
