"""KV-cache decoding of t5 equals the full encoder-decoder forward pass, padded sources included."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.data.objectives import START_ID
from scalelab.inference.decode import Sampler, encode, extend, generate, init_cache, prefill
from scalelab.inference.quantize import dequantize, quantize
from scalelab.model import ConfigError, ModelConfig
from tests.inference.helpers import assert_logits_close, eager_model

# GQA (4 query heads share 2 key/value heads), encoder and decoder of different depths, and weights large
# enough that every block moves the logits.
BASE = ModelConfig(
    family="t5",
    vocab_size=61,
    d_model=32,
    n_layers=2,
    n_decoder_layers=3,
    n_heads=4,
    n_kv_heads=2,
    max_seq_len=16,
    position="relative",
    relative_buckets=8,
    relative_max_distance=10,
    dtype="float32",
    init_std=0.1,
)
SOURCE, TARGET = 9, 7
LENGTHS = [9, 5, 2]  # real source tokens per row; the rest is padding

CASES = {
    "relative-gqa": {},
    "sliding-rope": {"attention": "sliding", "window": 4, "position": "rope"},
    "post-norm-untied-bias-separate-tables": {
        "norm_position": "post",
        "norm": "layernorm",
        "tie_embeddings": False,
        "tie_encoder_decoder_embeddings": False,
        "use_bias": True,
        "position": "learned",
    },
}


def _tokens(seed: int, shape: tuple[int, int]) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), shape, 1, BASE.vocab_size)


def _segments(lengths: list[int]) -> jax.Array:
    return (jnp.arange(SOURCE) < jnp.array(lengths)[:, None]).astype(jnp.int32)


@pytest.fixture(scope="module")
def base():
    return eager_model(BASE)


@pytest.mark.parametrize("case", CASES)
def test_cached_steps_over_padded_sources_equal_the_full_forward_and_each_source_alone(case):
    cfg = dataclasses.replace(BASE, **CASES[case])
    model, params, apply = eager_model(cfg)
    # Padding holds real-looking tokens, so attending to it anywhere would change the logits.
    sources = _tokens(1, (3, SOURCE))
    decoder_inputs = jnp.concatenate([jnp.full((3, 1), START_ID), _tokens(2, (3, TARGET - 1))], axis=1)
    segments = _segments(LENGTHS)
    full = apply(params, {"inputs": sources, "segment_ids": segments, "decoder_inputs": decoder_inputs})

    memory = encode(model.graphdef, params, sources, jnp.array(LENGTHS))
    assert memory.k.shape == memory.v.shape == (3, 3, SOURCE, 2, 8)  # decoder layers, batch, source, kv heads, dim
    cache = init_cache(cfg, 3, TARGET + 2, memory)  # spare slots must stay invisible
    logits, cache = extend(model.graphdef, params, cache, decoder_inputs[:, :3])
    steps = [logits]
    for t in range(3, TARGET):
        logits, cache = extend(model.graphdef, params, cache, decoder_inputs[:, t : t + 1])
        steps.append(logits)
    cached = jnp.concatenate(steps, axis=1)
    assert_logits_close(cached, full)
    np.testing.assert_array_equal(cache.lengths, [TARGET] * 3)

    # Each row decodes as its unpadded source alone, with no segment ids: the padding is invisible.
    for row, n in enumerate(LENGTHS):
        alone = apply(params, {"inputs": sources[row : row + 1, :n], "decoder_inputs": decoder_inputs[row : row + 1]})
        assert_logits_close(cached[row], alone[0])


def test_decoding_from_the_start_id_prefills_it_and_greedy_matches_uncached_greedy(base):
    model, params, apply = base
    sources = _tokens(3, (3, SOURCE))
    lengths = jnp.array(LENGTHS)
    memory = encode(model.graphdef, params, sources, lengths)
    start = jnp.full((3, 1), START_ID, jnp.int32)
    first, _ = prefill(model.graphdef, params, init_cache(BASE, 3, 4, memory), start, jnp.ones(3, jnp.int32))
    full = apply(params, {"inputs": sources, "segment_ids": _segments(LENGTHS), "decoder_inputs": start})
    assert_logits_close(first, full[:, 0])

    greedy = generate(BASE, model.graphdef, params, sources, lengths, new_tokens=8, start_id=START_ID)
    assert greedy.shape == (3, 8)
    # Uncached greedy over one fixed buffer (one compiled shape): the decoder is causal, so the slots after
    # position t do not change its logits.
    decoded, compiled = jnp.zeros((3, 9), jnp.int32).at[:, :1].set(start), jax.jit(apply)
    for t in range(8):
        logits = compiled(params, {"inputs": sources, "segment_ids": _segments(LENGTHS), "decoder_inputs": decoded})
        decoded = decoded.at[:, t + 1].set(jnp.argmax(logits[:, t], axis=-1))
    np.testing.assert_array_equal(greedy, decoded[:, 1:])


def test_sampling_is_reproducible_and_int8_decodes_the_dequantized_weights(base):
    model, params, _ = base
    sources, lengths = _tokens(4, (3, SOURCE)), jnp.array(LENGTHS)
    hot = Sampler(temperature=1.5, top_k=3)
    a, b, c = (
        generate(BASE, model.graphdef, params, sources, lengths, new_tokens=8, seed=s, sampler=hot, start_id=START_ID)
        for s in (7, 7, 8)
    )
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

    quantized = jax.jit(lambda p: quantize(p, model.axes, "int8"))(params)
    int8 = generate(BASE, model.graphdef, quantized, sources, lengths, new_tokens=8, start_id=START_ID)
    widened = jax.jit(dequantize)(quantized)
    widened = generate(BASE, model.graphdef, widened, sources, lengths, new_tokens=8, start_id=START_ID)
    np.testing.assert_array_equal(int8, widened)


def test_t5_decoding_needs_its_memory_and_start_id_and_fits_the_decoder_in_max_seq_len(base):
    model, params, _ = base
    sources = _tokens(5, (1, 4))
    with pytest.raises(ConfigError, match=r"a t5 cache needs memory=encode"):
        init_cache(BASE, batch=1)
    with pytest.raises(ConfigError, match=r"a t5 model decodes from start_id"):
        generate(BASE, model.graphdef, params, sources, new_tokens=2)
    # The start id takes one of the 16 positions, and there is no prompt to shorten.
    too_many = r"the decoder's start id takes 1 and 16 new tokens .* model.max_seq_len=16; ask for at most 15 new"
    with pytest.raises(ConfigError, match=too_many):
        generate(BASE, model.graphdef, params, sources, new_tokens=16, start_id=START_ID)
    too_long = (
        r"the t5 encoder's input has 17 tokens but holds at most model.max_seq_len=16; shorten the prompt to at most 16"
    )
    with pytest.raises(ConfigError, match=too_long):
        generate(BASE, model.graphdef, params, _tokens(5, (1, 17)), new_tokens=1, start_id=START_ID)
