"""The loss: fp32 cross-entropy that ignores padding, and the optional z-loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.train.steps import cross_entropy


def test_cross_entropy_ignores_padding_and_matches_a_direct_computation():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 7), jnp.bfloat16)
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 7)
    weights = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
    loss, ce = cross_entropy(logits, targets, weights)
    log_probs = jax.nn.log_softmax(np.asarray(logits, np.float32), axis=-1)
    nll = -np.take_along_axis(np.asarray(log_probs), np.asarray(targets)[..., None], -1)[..., 0]
    assert ce == pytest.approx(float((nll * weights).sum() / weights.sum()), rel=1e-6)
    assert loss == ce
    garbage = logits.at[0, 3:].set(1e4)  # padded positions can hold anything
    assert cross_entropy(garbage, targets, weights)[1] == pytest.approx(float(ce), rel=1e-6)


def test_z_loss_adds_the_weighted_mean_squared_log_partition():
    logits = jax.random.normal(jax.random.key(2), (1, 4, 6)) * 3
    targets = jnp.zeros((1, 4), jnp.int32)
    weights = jnp.ones((1, 4))
    loss, ce = cross_entropy(logits, targets, weights, z_loss=1e-2)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    assert float(loss - ce) == pytest.approx(1e-2 * float(jnp.mean(log_z**2)), rel=1e-5)


def _autodiff_reference(logits, targets, weights, z_loss):
    log_z = jax.nn.logsumexp(logits, axis=-1)
    nll = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    denom = weights.sum()
    ce = (nll * weights).sum() / denom
    return ce + z_loss * (log_z**2 * weights).sum() / denom, ce


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_hand_written_gradient_matches_autodiff_of_the_definition(z_loss):
    logits = jax.random.normal(jax.random.key(3), (3, 6, 11)) * 4
    targets = jax.random.randint(jax.random.key(4), (3, 6), 0, 11)
    weights = jnp.ones((3, 6)).at[1, 4:].set(0.0)
    for output in (0, 1):  # the optimised loss, and the plain cross-entropy reported beside it
        ours = jax.grad(lambda x, o=output: cross_entropy(x, targets, weights, z_loss)[o])(logits)
        expected = jax.grad(lambda x, o=output: _autodiff_reference(x, targets, weights, z_loss)[o])(logits)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)
        assert not np.any(np.asarray(ours)[1, 4:])  # padding gets no gradient
    both = jax.grad(lambda x: sum(cross_entropy(x, targets, weights, z_loss)))(logits)
    np.testing.assert_allclose(
        both, jax.grad(lambda x: sum(_autodiff_reference(x, targets, weights, z_loss)))(logits), rtol=1e-5, atol=1e-7
    )
