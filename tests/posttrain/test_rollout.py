"""Rollouts: sampled tokens, their log-probabilities under the policy, and where responses end."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model import ConfigError, ModelConfig
from scalelab.model.functional import describe
from scalelab.posttrain.losses import token_logprobs
from scalelab.posttrain.ppo_policy import hidden_and_logits
from scalelab.posttrain.rollout import join, sample
from tests.inference.helpers import weight_casts_in_loop

CFG = ModelConfig(vocab_size=23, d_model=32, n_layers=2, n_heads=4, max_seq_len=24, dtype="float32", init_std=0.3)


@pytest.fixture(scope="module")
def policy():
    model = describe(CFG)
    return model, jax.jit(model.init, static_argnums=0)(0)  # compiled: op by op it took seconds


NEW = 10  # both tests sample 8 prompts of width 4 by NEW tokens: one compiled program for the EOS-free samples


def test_rollout_logprobs_equal_the_full_forward_on_the_joined_sequence(policy):
    model, params = policy
    # Right-padded: every second prompt has 2 tokens.
    prompts, lengths = jnp.array([[5, 6, 7, 8], [9, 10, 0, 0]] * 4), jnp.array([4, 2] * 4)
    out = sample(CFG, model.graphdef, params, prompts, lengths, new_tokens=NEW, key=jax.random.key(3))
    assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (8, NEW)
    tokens, response_mask = join(prompts, lengths, out.tokens, out.mask)
    np.testing.assert_array_equal(tokens[1, : 2 + NEW], [9, 10, *np.asarray(out.tokens[1])])
    # The decoder's log-probability of each sampled token is what a plain forward pass gives it.
    forward = jax.jit(lambda p, t: token_logprobs(hidden_and_logits(model.graphdef, p, t[:, :-1])[1], t[:, 1:]))
    full = forward(params, tokens)
    for row, length in enumerate(np.asarray(lengths)):
        np.testing.assert_allclose(out.logprobs[row], full[row, length - 1 : length - 1 + NEW], atol=2e-5)
        np.testing.assert_array_equal(response_mask[row, length : length + NEW], 1.0)
    assert float(response_mask.sum()) == 8 * NEW


def test_a_response_ends_at_its_first_eos_and_keeps_it(policy):
    model, params = policy
    prompts, lengths = jnp.array([[1, 2, 3, 0]] * 8), jnp.full((8,), 3)
    free = sample(CFG, model.graphdef, params, prompts, lengths, new_tokens=NEW, key=jax.random.key(0))
    eos = int(free.tokens[0, 2])  # a token the first row samples third: it ends there when it is the EOS
    out = sample(CFG, model.graphdef, params, prompts, lengths, new_tokens=NEW, key=jax.random.key(0), eos_id=eos)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    assert mask[0].tolist() == [1, 1, 1] + [0] * 7
    for row in range(8):
        stop = np.flatnonzero(tokens[row] == eos)
        end = stop[0] + 1 if stop.size else 10
        assert mask[row].tolist() == [1] * end + [0] * (10 - end)
        assert (tokens[row, end:] == 0).all() and (np.asarray(out.logprobs)[row, end:] == 0).all()
        np.testing.assert_array_equal(tokens[row, :end], np.asarray(free.tokens)[row, :end])
    np.testing.assert_array_equal(out.lengths, mask.sum(1))


def test_rollouts_refuse_a_zero_temperature(policy):
    model, params = policy
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        sample(CFG, model.graphdef, params, jnp.ones((1, 2), int), jnp.array([2]), new_tokens=2,
               key=jax.random.key(0), temperature=0.0)  # fmt: skip


def test_a_bf16_policy_samples_with_its_weights_cast_once_outside_the_token_loop():
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    model = describe(cfg)
    params = jax.eval_shape(lambda: model.init(0))
    prompts, lengths = jnp.ones((2, 3), jnp.int32), jnp.array([3, 2])

    def rollout(p):
        return sample(cfg, model.graphdef, p, prompts, lengths, new_tokens=5, key=jax.random.key(0))

    assert weight_casts_in_loop(jax.make_jaxpr(rollout)(params).jaxpr, model.shapes, 5) == []
