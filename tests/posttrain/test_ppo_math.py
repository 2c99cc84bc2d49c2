"""PPO's arithmetic against cases worked out by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.posttrain.ppo_math import (
    AdaptiveKL,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_per_token,
    shaped_rewards,
    whiten,
)


def test_gae_matches_a_hand_computed_case():
    # Row 0: one prompt column, then three response tokens. Row 1: the response stopped after one token.
    mask = jnp.array([[0, 1, 1, 1], [0, 1, 0, 0]], jnp.float32)
    rewards = jnp.array([[0.0, 0.5, -0.2, 1.0], [0.0, 2.0, 0.0, 0.0]])
    values = jnp.array([[9.0, 0.1, 0.2, 0.3], [0.0, 0.5, 0.7, 0.7]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0, backwards: delta3 = 1 - 0.3 = 0.7; delta2 = -0.2 + 0.9*0.3 - 0.2 = -0.13 -> -0.13 + 0.72*0.7;
    # delta1 = 0.5 + 0.9*0.2 - 0.1 = 0.58 -> 0.58 + 0.72*0.374. Row 1 ends at column 1: 2 - 0.5.
    expected = np.array([[0.0, 0.84928, 0.374, 0.7], [0.0, 1.5, 0.0, 0.0]])
    np.testing.assert_allclose(advantages, expected, atol=1e-6)
    np.testing.assert_allclose(returns, (expected + np.asarray(values)) * np.asarray(mask), atol=1e-6)


def test_clipped_policy_loss_and_clip_fraction_on_a_hand_built_case():
    ratios = np.array([[1.5, 0.5, 1.1, 1.5, 9.0]])
    old = jnp.zeros((1, 5))
    advantages = jnp.array([[1.0, 1.0, -1.0, -1.0, 100.0]])
    mask = jnp.array([[1, 1, 1, 1, 0]], jnp.float32)  # the last column is padding and must not count
    loss, clip_fraction = clipped_policy_loss(jnp.log(ratios), old, advantages, mask, clip=0.2)
    # Per token max(-A r, -A clip(r)): -1.2 (clipped), -0.5, 1.1 (equal branches), 1.5.
    assert float(loss) == pytest.approx((-1.2 - 0.5 + 1.1 + 1.5) / 4, abs=1e-6)
    assert float(clip_fraction) == pytest.approx(0.25)


def test_clipped_value_loss_keeps_the_larger_error():
    old = jnp.array([[0.0, 0.0]])
    values = jnp.array([[1.0, 0.1]])
    returns = jnp.array([[1.0, 1.0]])
    loss, clipped = clipped_value_loss(values, old, returns, jnp.ones((1, 2)), clip=0.2)
    # Token 0: plain error 0, clipped value 0.2 has error 0.64. Token 1: plain 0.81, clipping changes nothing.
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.81) / 2, abs=1e-6)
    assert float(clipped) == pytest.approx(0.5)


def test_shaped_rewards_penalise_kl_and_pay_the_score_on_the_last_response_token():
    mask = jnp.array([[0, 1, 1, 0], [0, 0, 0, 0]], jnp.float32)
    kl = kl_per_token(jnp.array([[5.0, -1.0, -2.0, 7.0]] * 2), jnp.array([[0.0, -1.5, -1.0, 0.0]] * 2), mask)
    np.testing.assert_allclose(kl, [[0.0, 0.5, -1.0, 0.0], [0.0] * 4])
    rewards = shaped_rewards(jnp.array([3.0, 4.0]), kl, mask, beta=0.1)
    # An empty response (row 1) gets nothing: there is no token to pay.
    np.testing.assert_allclose(rewards, [[0.0, -0.05, 0.1 + 3.0, 0.0], [0.0] * 4], atol=1e-6)


def test_adaptive_kl_raises_beta_above_the_target_and_lowers_it_below():
    above = AdaptiveKL(beta=0.1, target=1.0, horizon=100)
    assert above.update(kl=5.0, samples=10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped to +20%
    below = AdaptiveKL(beta=0.1, target=1.0, horizon=100)
    assert below.update(kl=0.9, samples=10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    fixed = AdaptiveKL(beta=0.1)
    assert fixed.update(kl=50.0, samples=10) == 0.1


def test_running_moments_match_the_pooled_statistics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, 7), rng.normal(-1.0, 0.5, 11)
    moments = RunningMoments()
    moments.update(a)
    moments.update(b)
    pooled = np.concatenate([a, b])
    assert moments.mean == pytest.approx(pooled.mean())
    assert moments.std == pytest.approx(pooled.std())
    normalized = moments.normalize(pooled)
    assert normalized.mean() == pytest.approx(0.0, abs=1e-9)
    assert normalized.std() == pytest.approx(1.0)


def test_whiten_ignores_masked_entries():
    x = jnp.array([[1.0, 3.0, 100.0]])
    out = whiten(x, jnp.array([[1.0, 1.0, 0.0]]))
    np.testing.assert_allclose(out, [[-1.0, 1.0, 0.0]], atol=1e-4)
