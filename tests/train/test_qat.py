"""Quantization-aware training: the loss sees the inference grid, the gradient passes straight through."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalelab.inference.quantize import dequantize, quantize
from scalelab.model import ModelConfig
from scalelab.model.config import ConfigError
from scalelab.model.functional import describe
from scalelab.train.config import Config, TrainLoopConfig
from scalelab.train.qat import fake_quant, fake_quantized
from scalelab.train.steps import cross_entropy, make_train_step

MODEL = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=16, dtype="float32", init_std=0.1)


def test_fake_quant_rounds_forward_and_is_the_identity_backward():
    w = jax.random.normal(jax.random.key(0), (64, 48))
    axes = ("embed", "mlp")
    rounded = fake_quant(w, axes, 4, 32)
    assert len(np.unique(np.asarray(rounded[:32, 0]))) <= 15  # one group of 32 inputs: at most 15 levels
    assert float(jnp.max(jnp.abs(rounded - w))) > 0
    cotangent = jax.random.normal(jax.random.key(1), w.shape)
    grad = jax.grad(lambda w: jnp.sum(fake_quant(w, axes, 4, 32) * cotangent))(w)
    np.testing.assert_array_equal(grad, cotangent)  # straight through: d fake_quant(w) / dw = 1


def test_the_qat_grid_is_the_grid_inference_runs():
    model = describe(MODEL)
    params = model.init(0)
    trained = fake_quantized(params, model.axes, 4, 32)
    served = dequantize(quantize(params, model.axes, "int4-g32"))
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(served), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_qat_train_step_takes_the_loss_of_the_quantized_model_and_the_straight_through_gradient():
    model = describe(MODEL)
    params = model.init(0)
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, MODEL.vocab_size)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": jnp.ones((2, 8))}
    cfg = Config(model=MODEL, train=TrainLoopConfig(batch_size=2, seq_len=8, qat_bits=4, qat_group_size=32))
    step = make_train_step(cfg, model, optax.sgd(1.0), lambda s: 1.0)
    state = {"step": jnp.int32(0), "params": params, "opt_state": optax.sgd(1.0).init(params)}
    new_state, metrics = jax.jit(step)(state, batch)

    served = dequantize(quantize(params, model.axes, "int4-g32"))

    def served_loss(p):
        return cross_entropy(model.apply(p, batch), batch["targets"], batch["weights"])[1]

    assert float(metrics["loss"]) == pytest.approx(float(served_loss(served)), rel=1e-5)
    plain = make_train_step(
        dataclasses.replace(cfg, train=TrainLoopConfig(batch_size=2, seq_len=8)), model, optax.sgd(1.0), lambda s: 1.0
    )
    assert float(jax.jit(plain)(state, batch)[1]["loss"]) != pytest.approx(float(metrics["loss"]), rel=1e-3)
    # SGD at lr 1: the update is minus the gradient at the quantized weights, applied to the fp32 ones.
    grads = jax.grad(served_loss)(served)
    expected = jax.tree.map(lambda p, g: p - g, params, grads)
    for a, b in zip(jax.tree.leaves(new_state["params"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_qat_settings_are_checked():
    with pytest.raises(ConfigError, match=r"train.qat_bits=3 is not a grid; use 4 or 8"):
        TrainLoopConfig(qat_bits=3)
    with pytest.raises(ConfigError, match=r"does not split into groups of 48"):
        fake_quant(jnp.ones((64, 8)), ("embed", "mlp"), 4, 48)
