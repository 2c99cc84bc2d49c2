"""Learning-rate schedules and the weight-decay mask."""

import jax
import numpy as np
import pytest

from model.functional import describe
from train.config import load_config
from train.optim import decay_mask, learning_rate


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
