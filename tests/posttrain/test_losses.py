"""The losses on hand-built cases, zero gradient on prompt tokens, and packed examples isolated from each other."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model.config import ModelConfig
from scalelab.model.functional import describe
from scalelab.posttrain.encode import row_batch, sequence
from scalelab.posttrain.heads import HEAD, ScalarHeadModel
from scalelab.posttrain.losses import bradley_terry, dpo, pairs, sequence_logprobs
from scalelab.train.steps import cross_entropy

TINY = ModelConfig(family="gpt", vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32, dtype="float32")


def test_bradley_terry_on_a_hand_built_case():
    loss, metrics = bradley_terry(jnp.array([2.0, 0.0]), jnp.array([1.0, 1.0]))
    expected = (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(1.0))) / 2  # -log sigmoid(+1), -log sigmoid(-1)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["accuracy"]) == 0.5 and float(metrics["margin"]) == 0.0


def test_dpo_is_minus_log_sigmoid_of_beta_margin_and_its_gradient_favours_chosen():
    beta = 0.5
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = -3.0, -2.0, -4.0, -1.0
    loss, metrics = dpo(*(jnp.array([v]) for v in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)), beta)
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))  # 0.5 * (1 - (-1)) = 1
    assert float(loss) == pytest.approx(np.log1p(np.exp(-margin)), rel=1e-6)
    assert float(metrics["reward_margin"]) == pytest.approx(margin) and float(metrics["accuracy"]) == 1.0
    grad = jax.grad(lambda c, r: dpo(c, r, jnp.array([ref_chosen]), jnp.array([ref_rejected]), beta)[0], (0, 1))(
        jnp.array([policy_chosen]), jnp.array([policy_rejected])
    )
    assert float(grad[0][0]) < 0 < float(grad[1][0])  # descent raises log p(chosen), lowers log p(rejected)


def _params(model, seed=0):
    return jax.jit(model.init, static_argnums=0)(seed)


@pytest.fixture(scope="module")
def decoder():
    """(the tiny decoder's parameters, its forward pass compiled once, the decoder): every call below has one shape."""
    model = describe(TINY)
    return _params(model), jax.jit(model.apply), model


def test_prompt_tokens_get_exactly_zero_gradient(decoder):
    params, apply, _ = decoder
    batch = {
        k: jnp.asarray(v) for k, v in row_batch([[sequence([5, 6, 7, 8], [9, 10], 1, 16, "refuse", "x")]], 16).items()
    }
    logits = apply(params, batch)
    grad = jax.jit(jax.grad(lambda lg: cross_entropy(lg, batch["targets"], batch["weights"])[0]))(logits)
    prompt = np.asarray(batch["weights"][0]) == 0
    assert prompt[:4].all() and not prompt[4:7].any()
    assert np.all(np.asarray(grad)[0][prompt] == 0.0) and np.abs(np.asarray(grad)[0][~prompt]).sum() > 0


def test_packed_examples_give_the_logits_they_have_alone(decoder):
    first = sequence([5, 6, 7], [8, 9], 1, 16, "refuse", "a")
    second = sequence([11, 12], [13, 14, 15], 1, 16, "refuse", "b")
    params, apply, _ = decoder
    packed = apply(params, {k: jnp.asarray(v) for k, v in row_batch([[first, second]], 16).items()})
    for seq, start in ((first, 0), (second, len(first.inputs))):
        alone = apply(params, {k: jnp.asarray(v) for k, v in row_batch([[seq]], 16).items()})
        n = len(seq.inputs)
        np.testing.assert_allclose(packed[0, start : start + n], alone[0, :n], rtol=1e-5, atol=1e-5)


def test_scalar_head_scores_the_last_real_token_and_sequence_logprobs_sum_the_completion(decoder):
    decoder_params, _, base = decoder
    model = ScalarHeadModel.wrap(base)
    params = {**decoder_params, HEAD: model.init_head(0)}  # what model.init(0) builds, without compiling it again
    short, long = sequence([5], [6], 1, 16, "refuse", "a"), sequence([5], [6, 7, 8], 1, 16, "refuse", "b")
    batch = {k: jnp.asarray(v) for k, v in row_batch([[short], [long]], 16).items()}
    # One compiled program for the three outputs (op by op they took most of this test's time).
    values, scores, logits = jax.jit(lambda p, b: (model.token_values(p, b), model.scores(p, b), model.apply(p, b)))(
        params, batch
    )
    np.testing.assert_allclose(scores, [values[0, 2], values[1, 4]], rtol=1e-6)
    chosen, rejected = pairs(sequence_logprobs(logits, batch["targets"], batch["weights"]))
    logp = jax.nn.log_softmax(logits[0])
    assert float(chosen[0]) == pytest.approx(float(logp[1, 6] + logp[2, 1]), rel=1e-5)
    assert dataclasses.is_dataclass(model) and float(rejected[0]) < 0
