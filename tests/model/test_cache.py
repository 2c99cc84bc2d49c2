"""The decoding cache: writes land in one layer's slots only, and bf16 held as bits reads back bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scalelab.model.attention import Attention
from scalelab.model.cache import BlockCache, KeyValues, cached_self_attention_inputs
from scalelab.model.config import ModelConfig
from scalelab.model.layers import AttentionInputs
from scalelab.model.masks import FullAttention

LAYERS, BATCH, SLOTS, HEADS, DIM = 3, 2, 5, 2, 4


def _stack(dtype) -> KeyValues:
    k = jax.random.normal(jax.random.key(0), (LAYERS, BATCH, SLOTS, HEADS, DIM)).astype(dtype)
    return KeyValues(k, -k)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_a_layer_of_a_stack_writes_only_its_rows_slots_and_reads_them_back(dtype):
    stack = _stack(dtype)
    held = stack.as_bits()
    assert held.k.dtype == (jnp.uint16 if dtype == jnp.bfloat16 else dtype)
    new = jnp.full((BATCH, 1, HEADS, DIM), 7.5)
    slots = jnp.array([[1], [4]])
    written = held.at(jnp.int32(2)).write(slots, new, 2 * new)
    k, v = written.read()
    assert k.dtype == v.dtype == dtype
    want = stack.k.at[2, 0, 1].set(7.5).at[2, 1, 4].set(7.5)
    np.testing.assert_array_equal(written.at(None).as_values().k, want)
    np.testing.assert_array_equal(k, want[2])
    np.testing.assert_array_equal(v, (-stack.k).at[2, 0, 1].set(15.0).at[2, 1, 4].set(15.0)[2])
    # A slot past the end is dropped, and a layer's own cache (no stack) is written the same way.
    single = KeyValues(stack.k[0], stack.v[0]).write(jnp.array([[SLOTS], [0]]), new, new)
    np.testing.assert_array_equal(single.read()[0], stack.k[0].at[1, 0].set(7.5))


def test_attention_given_a_cache_attends_over_it_and_returns_it_updated_while_cross_attention_only_reads():
    cfg = ModelConfig(d_model=16, n_heads=4, n_kv_heads=2, dtype="float32", init_std=0.3)
    attn = Attention(cfg, rngs=nnx.Rngs(params=0))
    x = jax.random.normal(jax.random.key(1), (BATCH, 3, 16))
    full = attn(x, AttentionInputs(mask=FullAttention(causal=True).allowed(jnp.arange(3)[:, None], jnp.arange(3))))

    def at(*positions: int) -> AttentionInputs:
        at = jnp.broadcast_to(jnp.array(positions), (BATCH, len(positions)))
        return cached_self_attention_inputs(FullAttention(causal=True), at, SLOTS, None, lambda _: None)

    empty = KeyValues(jnp.zeros((BATCH, SLOTS, 2, 4)), jnp.zeros((BATCH, SLOTS, 2, 4)))
    first, cache = attn(x[:, :2], at(0, 1), cache=empty)
    last, cache = attn(x[:, 2:], at(2), cache=cache)
    np.testing.assert_allclose(jnp.concatenate([first, last], axis=1), full, rtol=0, atol=1e-6)
    assert bool(jnp.all(cache.k[:, 3:] == 0)) and bool(jnp.all(cache.k[:, :3] != 0))

    memory = attn.keys_values(x)
    y, kept = attn(x[:, :1], AttentionInputs(), cache=memory)  # no slots: a cross-attention cache is only read
    assert kept is memory
    np.testing.assert_allclose(y, attn(x[:, :1], AttentionInputs(), memory=x), rtol=0, atol=1e-6)
    assert BlockCache(memory).map(lambda kv: kv.at(None)).cross_attn is None
