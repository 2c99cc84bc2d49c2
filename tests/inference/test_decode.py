"""KV-cache decoding equals the full forward pass, for every position kind and attention pattern."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.inference.decode import (
    Sampler,
    extend,
    generate,
    init_cache,
    next_token,
    prefill,
    weights_in_compute_dtype,
)
from scalelab.model import ConfigError, ModelConfig
from tests.inference.helpers import assert_logits_close, eager_model, weight_casts_in_loop

# GQA (4 query heads share 2 key/value heads) and weights large enough that every block moves the logits.
BASE = ModelConfig(
    vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=24, dtype="float32", init_std=0.1
)
LENGTH, PROMPT = 14, 5

CASES = {
    "rope": {},
    "learned": {"position": "learned"},
    "sinusoidal": {"position": "sinusoidal"},
    "relative": {"position": "relative", "relative_buckets": 8, "relative_max_distance": 10},
    "alibi": {"position": "alibi"},
    "sliding-rope": {"attention": "sliding", "window": 4},
    "sliding-alibi": {"attention": "sliding", "window": 5, "position": "alibi"},
    "sparse-relative": {"attention": "sparse", "window": 3, "global_tokens": 2, "position": "relative"},
    "post-norm-untied-bias-swiglu-unscanned": {
        "norm_position": "post",
        "norm": "layernorm",
        "tie_embeddings": False,
        "use_bias": True,
        "activation": "swiglu",
        "scan_layers": False,
    },
}


def _tokens(seed: int, shape: tuple[int, int]) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), shape, 0, BASE.vocab_size)


@pytest.fixture(scope="module")
def base():
    return eager_model(BASE)


@pytest.mark.parametrize("case", CASES)
def test_prefill_then_cached_steps_equal_the_full_forward(case):
    cfg = dataclasses.replace(BASE, **CASES[case])
    model, params, apply = eager_model(cfg)
    tokens = _tokens(1, (2, LENGTH))
    full = apply(params, {"inputs": tokens})

    cache = init_cache(cfg, batch=2, max_len=LENGTH + 2)  # spare slots must stay invisible
    logits, cache = extend(model.graphdef, params, cache, tokens[:, :PROMPT])
    steps = [logits]
    for t in range(PROMPT, LENGTH):
        logits, cache = extend(model.graphdef, params, cache, tokens[:, t : t + 1])
        steps.append(logits)
    assert_logits_close(jnp.concatenate(steps, axis=1), full)
    np.testing.assert_array_equal(cache.lengths, [LENGTH, LENGTH])


def test_the_cache_is_stacked_per_layer_with_kv_heads_in_the_compute_dtype_and_bf16_decodes_close():
    cfg = dataclasses.replace(BASE, dtype="bfloat16")
    cache = init_cache(cfg, batch=3, max_len=10)
    assert cache.k.shape == cache.v.shape == (3, 3, 10, 2, 8)  # layers, batch, max_len, kv_heads, head_dim
    assert cache.k.dtype == jnp.bfloat16
    model, params, apply = eager_model(cfg)
    tokens = _tokens(2, (3, 7))
    first, cache = extend(model.graphdef, params, cache, tokens[:, :4])
    assert cache.k.dtype == jnp.bfloat16
    assert bool(jnp.any(cache.k[:, :, :4] != 0)) and bool(jnp.all(cache.k[:, :, 4:] == 0))
    rest, cache = extend(model.graphdef, params, cache, tokens[:, 4:])
    full = apply(params, {"inputs": tokens})
    # Both paths round activations to bf16 (8 significant bits) but at different points, so they agree to a
    # few bf16 steps of the largest logit, not to fp32 precision.
    scale = float(jnp.max(jnp.abs(full)))
    np.testing.assert_allclose(jnp.concatenate([first, rest], axis=1), full, rtol=0, atol=2**-6 * scale)


@pytest.mark.parametrize("case", ["rope", "learned", "sliding-alibi"])
def test_right_padded_prompts_of_different_lengths_decode_like_each_alone(case):
    cfg = dataclasses.replace(BASE, **CASES[case])
    model, params, apply = eager_model(cfg)
    lengths = [6, 3, 1]
    prompts = _tokens(3, (3, 6))
    padded = jnp.where(jnp.arange(6) < jnp.array(lengths)[:, None], prompts, 0)

    logits, _ = prefill(model.graphdef, params, init_cache(cfg, 3, 9), padded, jnp.array(lengths))
    for row, n in enumerate(lengths):
        alone = apply(params, {"inputs": prompts[row : row + 1, :n]})
        assert_logits_close(logits[row], alone[0, -1])

    together = generate(cfg, model.graphdef, params, padded, jnp.array(lengths), new_tokens=5)
    for row, n in enumerate(lengths):
        alone = generate(cfg, model.graphdef, params, prompts[row : row + 1, :n], new_tokens=5)
        np.testing.assert_array_equal(together[row], alone[0])


def _greedy_without_cache(apply, params, prompt: jax.Array, new_tokens: int) -> jax.Array:
    # One fixed buffer (one compiled shape): the model is causal, so the slots after t do not change its logits.
    start = prompt.shape[1]
    tokens = jnp.zeros((prompt.shape[0], start + new_tokens), jnp.int32).at[:, :start].set(prompt)
    for t in range(start, start + new_tokens):
        logits = apply(params, {"inputs": tokens})
        tokens = tokens.at[:, t].set(jnp.argmax(logits[:, t - 1], axis=-1))
    return tokens[:, start:]


def test_greedy_generation_is_deterministic_and_matches_uncached_greedy(base):
    model, params, apply = base
    prompt = _tokens(4, (2, 4))
    first = generate(BASE, model.graphdef, params, prompt, new_tokens=8)
    again = generate(BASE, model.graphdef, params, prompt, new_tokens=8, seed=123)
    assert first.shape == (2, 8)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, _greedy_without_cache(jax.jit(apply), params, prompt, 8))


def test_sampling_is_reproducible_from_a_seed_and_respects_top_k(base):
    model, params, apply = base
    prompt = _tokens(5, (4, 3))
    hot = Sampler(temperature=1.5, top_k=3)
    a = generate(BASE, model.graphdef, params, prompt, new_tokens=10, seed=7, sampler=hot)
    b = generate(BASE, model.graphdef, params, prompt, new_tokens=10, seed=7, sampler=hot)
    c = generate(BASE, model.graphdef, params, prompt, new_tokens=10, seed=8, sampler=hot)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

    # Every sampled token is among the 3 likeliest after its own prefix, and not always the likeliest.
    logits = apply(params, {"inputs": jnp.concatenate([prompt, a], axis=1)})[:, prompt.shape[1] - 1 : -1]
    top3 = jax.lax.top_k(logits, 3)[1]
    assert bool(jnp.all(jnp.any(top3 == a[..., None], axis=-1)))
    assert bool(jnp.any(top3[..., 0] != a))

    top1 = generate(BASE, model.graphdef, params, prompt, new_tokens=10, seed=7, sampler=Sampler(2.0, top_k=1))
    np.testing.assert_array_equal(top1, generate(BASE, model.graphdef, params, prompt, new_tokens=10))


def test_top_p_samples_the_nucleus_in_proportion_and_after_top_k():
    # probabilities 0.5, 0.3, 0.15, 0.05: the nucleus of 0.7 is the first two (0.5 < 0.7, 0.8 >= 0.7)
    logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]] * 4000, jnp.float32))
    draw = jax.jit(next_token, static_argnames="sampler")
    drawn = np.asarray(draw(logits, jax.random.key(0), Sampler(1.0, top_p=0.7)))
    assert set(drawn) == {1, 3}
    assert np.mean(drawn == 1) == pytest.approx(0.5 / 0.8, abs=0.03)  # renormalized within the nucleus
    assert set(np.asarray(draw(logits, jax.random.key(1), Sampler(1.0, top_p=0.85)))) == {1, 3, 2}
    assert set(np.asarray(draw(logits, jax.random.key(2), Sampler(1.0, top_p=1e-6)))) == {1}  # the likeliest stays
    assert set(np.asarray(draw(logits, jax.random.key(3), Sampler(1.0, top_p=1.0)))) == {0, 1, 2, 3}
    # top-k first: of the 2 likeliest (0.5 and 0.3, renormalized 0.625 and 0.375), a 0.6 nucleus is the first
    assert set(np.asarray(draw(logits, jax.random.key(4), Sampler(1.0, top_k=2, top_p=0.6)))) == {1}
    with pytest.raises(ConfigError, match=r"top_p must be in \(0, 1\]"):
        Sampler(top_p=0.0)


def test_too_long_prompts_and_other_families_are_errors_that_name_the_fix(base):
    model, params, _ = base
    with pytest.raises(
        ConfigError,
        match=r"prompt has 20 tokens and 5 new .* model.max_seq_len=24; shorten the prompt or ask for at most 4 new",
    ):
        generate(BASE, model.graphdef, params, _tokens(6, (1, 20)), new_tokens=5)
    with pytest.raises(ConfigError, match=r"shorten the prompt"):
        generate(BASE, model.graphdef, params, _tokens(6, (1, 25)), new_tokens=1)
    with pytest.raises(ConfigError, match=r"prompt lengths \[3, 0\] must give one length in 1..3 per prompt row"):
        generate(BASE, model.graphdef, params, _tokens(6, (2, 3)), [3, 0], new_tokens=1)
    with pytest.raises(ConfigError, match=r"needs model.family=gpt .* 'bert'"):
        init_cache(dataclasses.replace(BASE, family="bert"), batch=1)
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        Sampler(temperature=-1.0)
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        Sampler(top_k=0)


def test_a_bf16_model_decodes_with_its_weights_cast_once_outside_the_token_loop():
    # Every matmul casts its weight to bf16; left fp32, the weights would be cast again at every token.
    cfg = dataclasses.replace(BASE, dtype="bfloat16")
    model, params, _ = eager_model(cfg)
    new_tokens = 5  # not n_layers, so the token loop is the scan of this length
    jaxpr = jax.make_jaxpr(lambda p: generate(cfg, model.graphdef, p, _tokens(4, (2, 3)), new_tokens=new_tokens))
    assert weight_casts_in_loop(jaxpr(params).jaxpr, model.shapes, new_tokens) == []
    # The cast changes no number: every use casts these weights to bf16 anyway.
    cast = weights_in_compute_dtype(cfg, params)
    assert {w.dtype for w in jax.tree.leaves(cast)} == {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}  # norms: fp32
    tokens = _tokens(5, (2, 4))
    logits, _ = extend(model.graphdef, params, init_cache(cfg, 2, 4), tokens)
    np.testing.assert_array_equal(extend(model.graphdef, cast, init_cache(cfg, 2, 4), tokens)[0], logits)
