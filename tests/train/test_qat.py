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
from scalelab.train.optim import lr_values
from scalelab.train.qat import fake_quant, fake_quantized
from scalelab.train.steps import cross_entropy, make_train_step
from scalelab.train.trainer import Trainer

MODEL = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=16, dtype="float32", init_std=0.1)


@pytest.fixture(scope="module")
def model_params():
    """The model, its parameters and their int4-g32 inference grid widened back to fp32, each compiled once
    (op by op, every small op compiles on its own)."""
    model = describe(MODEL)
    params = jax.jit(model.init, static_argnums=0)(0)
    served = jax.jit(lambda p: dequantize(quantize(p, model.axes, "int4-g32")))(params)
    return model, params, served


def _batch(seed: int) -> dict[str, jax.Array]:
    tokens = jax.random.randint(jax.random.key(seed), (2, 9), 0, MODEL.vocab_size)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": jnp.ones((2, 8))}


def test_fake_quant_rounds_forward_and_is_the_identity_backward():
    w = jax.random.normal(jax.random.key(0), (64, 48))
    axes = ("embed", "mlp")
    rounded = fake_quant(w, axes, 4, 32)
    assert len(np.unique(np.asarray(rounded[:32, 0]))) <= 15  # one group of 32 inputs: at most 15 levels
    assert float(jnp.max(jnp.abs(rounded - w))) > 0
    cotangent = jax.random.normal(jax.random.key(1), w.shape)
    grad = jax.grad(lambda w: jnp.sum(fake_quant(w, axes, 4, 32) * cotangent))(w)
    np.testing.assert_array_equal(grad, cotangent)  # straight through: d fake_quant(w) / dw = 1


def test_the_qat_grid_is_the_grid_inference_runs(model_params):
    model, params, served = model_params
    trained = jax.jit(lambda p: fake_quantized(p, model.axes, 4, 32))(params)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(served), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_qat_train_step_takes_the_loss_of_the_quantized_model_and_the_straight_through_gradient(model_params):
    model, params, served = model_params
    batch = _batch(2)
    cfg = Config(model=MODEL, train=TrainLoopConfig(batch_size=2, seq_len=8, qat_bits=4, qat_group_size=32))
    step = make_train_step(cfg, model, lambda values: optax.sgd(1.0))
    state = {"step": jnp.int32(0), "params": params, "opt_state": optax.sgd(1.0).init(params)}
    new_state, metrics = jax.jit(step)(state, batch, lr_values(cfg))

    def served_loss(p):
        return cross_entropy(model.apply(p, batch), batch["targets"], batch["weights"])[1]

    assert float(metrics["loss"]) == pytest.approx(float(served_loss(served)), rel=1e-5)
    plain = make_train_step(
        dataclasses.replace(cfg, train=TrainLoopConfig(batch_size=2, seq_len=8)), model, lambda values: optax.sgd(1.0)
    )
    assert float(jax.jit(plain)(state, batch, lr_values(cfg))[1]["loss"]) != pytest.approx(
        float(metrics["loss"]), rel=1e-3
    )
    # SGD at lr 1: the update is minus the gradient at the quantized weights, applied to the fp32 ones.
    grads = jax.jit(jax.grad(served_loss))(served)
    expected = jax.tree.map(lambda p, g: p - g, params, grads)
    for a, b in zip(jax.tree.leaves(new_state["params"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_qat_runs_eval_loss_is_the_quantized_models(model_params):
    model, params, served = model_params
    batch = _batch(3)
    loss = jax.jit(lambda p: cross_entropy(model.apply(p, batch), batch["targets"], batch["weights"])[1])
    served_loss, plain_loss = float(loss(served)), float(loss(params))
    assert served_loss != pytest.approx(plain_loss, rel=1e-3)  # the grid moves the loss, so the check can tell
    train = TrainLoopConfig(batch_size=2, seq_len=8, qat_bits=4, qat_group_size=32)
    trainer = Trainer.build(Config(model=MODEL, train=train), jax.local_devices()[:1])
    sums = trainer.eval_step(params, batch)
    assert float(sums["loss_sum"] / sums["weight_sum"]) == pytest.approx(served_loss, rel=1e-5)


def test_qat_settings_are_checked():
    with pytest.raises(ConfigError, match=r"train.qat_bits=3 is not a grid; use 4 or 8"):
        TrainLoopConfig(qat_bits=3)
    with pytest.raises(ConfigError, match=r"does not split into groups of 48"):
        fake_quant(jnp.ones((64, 8)), ("embed", "mlp"), 4, 48)
