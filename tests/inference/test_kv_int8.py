"""The int8 KV cache: about half of bf16's bytes per token, values within half a step, the same greedy tokens."""

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.inference.decode import generate, init_cache
from scalelab.model import ModelConfig
from scalelab.model.cache import KeyValues
from scalelab.model.functional import describe

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32, dtype="bfloat16", init_std=0.2)


def _bytes_per_token(cache):
    held = [cache.k, cache.v] + ([] if cache.k_scale is None else [cache.k_scale, cache.v_scale])
    return sum(x.nbytes for x in held) / (cache.k.shape[1] * cache.k.shape[2])


def test_an_int8_cache_holds_a_token_in_about_half_the_bytes_of_bf16():
    bf16, int8 = init_cache(CFG, 2, 16), init_cache(CFG, 2, 16, kv_dtype="int8")
    assert bf16.k.dtype == jnp.bfloat16 and int8.k.dtype == jnp.int8
    # Per layer, token and kv head: 2 x head_dim bytes in bf16; head_dim int8 values plus a bf16 scale, for k and v.
    head_dim = CFG.dim_per_head
    assert _bytes_per_token(bf16) == CFG.n_layers * CFG.kv_heads * 2 * 2 * head_dim
    assert _bytes_per_token(int8) / _bytes_per_token(bf16) == (head_dim + 2) / (2 * head_dim)


def test_int8_keys_and_values_read_back_within_half_a_step():
    k, v = jax.random.normal(jax.random.key(0), (2, 2, 3, 2, 16), jnp.float32)
    empty = KeyValues(
        jnp.zeros((2, 8, 2, 16), jnp.int8),
        jnp.zeros((2, 8, 2, 16), jnp.int8),
        None,
        None,
        jnp.ones((2, 8, 2), jnp.bfloat16),
        jnp.ones((2, 8, 2), jnp.bfloat16),
    )
    held = empty.write(jnp.array([[0, 1, 2], [4, 5, 6]]), k, v)
    keys, values = held.read()
    for got, want, scale in ((keys[0, :3], k[0], held.k_scale[0, :3]), (values[1, 4:7], v[1], held.v_scale[1, 4:7])):
        step = scale.astype(jnp.float32)[..., None]
        error = jnp.abs(got - want)
        # Half a step, plus what rounding the scale to bf16 moves the largest value by (2^-8 of it).
        assert bool(jnp.all(error <= step / 2 + jnp.abs(want) * 2**-8))
        assert float(jnp.max(error / step)) > 0.4
    assert bool(jnp.all(keys[0, 3:] == 0))  # untouched slots stay empty


def test_decoding_with_an_int8_cache_gives_the_bf16_caches_greedy_tokens():
    model = describe(CFG)
    params = jax.jit(model.init, static_argnums=0)(0)
    prompts = jax.random.randint(jax.random.key(3), (3, 6), 0, CFG.vocab_size)
    lengths = np.array([6, 4, 2])
    bf16 = generate(CFG, model.graphdef, params, prompts, lengths, new_tokens=12)
    int8 = generate(CFG, model.graphdef, params, prompts, lengths, new_tokens=12, kv_dtype="int8")
    np.testing.assert_array_equal(int8, bf16)
