"""Attention patterns: blockwise kernels equal dense attention under the equivalent mask, and cost O(n·w)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scalelab.model import ModelConfig
from scalelab.model.attention import ATTENTION_KERNELS, dot_product_attention, same_segment, self_attention_inputs
from scalelab.model.masks import FullAttention, LocalGlobal, SlidingWindow
from scalelab.model.positions import POSITION_ENCODINGS, alibi_slopes, relative_bucket

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8


def _qkv(length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, length, HEADS, HEAD_DIM), np.float32)
    k = rng.standard_normal((2, length, KV_HEADS, HEAD_DIM), np.float32)
    v = rng.standard_normal((2, length, KV_HEADS, HEAD_DIM), np.float32)
    return q, k, v


def _segments(length: int) -> np.ndarray:
    """Row 0 is one document; row 1 packs three (the second starts early, the third late)."""
    cuts = np.searchsorted([3, length - 4], np.arange(length), side="right")
    return np.stack([np.ones(length, np.int32), (cuts + 1).astype(np.int32)])


def _bias_fn(kind: str, causal: bool):
    """Offsets -> bias through the position encoding `kind` (None: no bias)."""
    if kind == "none":
        return lambda rel: None
    cfg = ModelConfig(n_heads=HEADS, d_model=HEADS * HEAD_DIM, position=kind, relative_buckets=8)
    encoding = POSITION_ENCODINGS[kind](cfg, rngs=nnx.Rngs(params=3))
    if kind == "relative":  # a table large enough to matter
        encoding.table[...] = np.random.default_rng(4).standard_normal(encoding.table.shape).astype(np.float32)
    return lambda rel: encoding.attention_bias(rel, bidirectional=not causal)


def _band_mask(length: int, causal: bool, window: int, n_global: int = 0) -> np.ndarray:
    """The dense mask written out by hand: causal sees itself and the w-1 before; else +-w/2."""
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    band = (i - j >= 0) & (i - j < window) if causal else np.abs(i - j) <= window // 2
    is_global = (i < n_global) | (j < n_global)
    return (band | is_global) & ((j <= i) | (not causal))


def _dense_reference(q, k, v, mask, segments, bias_fn):
    idx = jnp.arange(q.shape[1])
    full = jnp.asarray(mask)[None] & same_segment(segments, segments)
    bias = bias_fn(idx[None, :] - idx[:, None])
    return dot_product_attention(q, k, v, full, None if bias is None else bias[None], jnp.float32)


def _blockwise(pattern, length, segments, bias_fn):
    """f(q, k, v): attention through `pattern`'s kernel, inputs prepared as a forward pass does."""

    def attend(q, k, v):
        inputs = self_attention_inputs(pattern, length, segments, None, bias_fn)
        return ATTENTION_KERNELS[type(pattern)].attend(q, k, v, inputs, jnp.float32)

    return attend


def _check_against_dense(pattern, length: int, mask: np.ndarray, bias: str, seed: int) -> None:
    idx = np.arange(length)
    np.testing.assert_array_equal(pattern.allowed(idx[:, None], idx[None, :]), mask)
    segments, bias_fn = _segments(length), _bias_fn(bias, pattern.causal)
    out, ref = jax.jit(
        lambda q, k, v: (
            _blockwise(pattern, length, segments, bias_fn)(q, k, v),
            _dense_reference(q, k, v, mask, segments, bias_fn),
        )
    )(*_qkv(length, seed))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# Whole blocks, a padded tail, shorter than one block, a band narrower than a block.
SLIDING = [(n, w, causal, "none") for n, w in [(16, 4), (19, 6), (5, 8)] for causal in (True, False)]
SLIDING += [(19, 6, True, "relative"), (19, 6, False, "relative"), (16, 4, True, "alibi"), (33, 2, False, "alibi")]


@pytest.mark.parametrize(("length", "window", "causal", "bias"), SLIDING)
def test_sliding_window_equals_full_attention_with_the_band_mask(length, window, causal, bias):
    mask = _band_mask(length, causal, window)
    _check_against_dense(SlidingWindow(causal, window), length, mask, bias, seed=0)


# More globals than a block, fewer, and more than the sequence has.
SPARSE = [(n, w, g, causal, "none") for n, w, g in [(16, 4, 2), (21, 6, 3), (4, 2, 6)] for causal in (True, False)]
SPARSE += [(21, 6, 3, True, "relative"), (16, 4, 2, False, "relative")]


@pytest.mark.parametrize(("length", "window", "n_global", "causal", "bias"), SPARSE)
def test_local_global_equals_its_dense_masked_reference(length, window, n_global, causal, bias):
    mask = _band_mask(length, causal, window, n_global)
    _check_against_dense(LocalGlobal(causal, window, n_global), length, mask, bias, seed=1)


@pytest.mark.parametrize(("pattern", "n_global"), [(SlidingWindow(True, 4), 0), (LocalGlobal(False, 4, 2), 2)])
def test_gradients_of_the_blockwise_kernels_match_the_dense_reference(pattern, n_global):
    length = 13
    mask, segments, no_bias = (
        _band_mask(length, pattern.causal, pattern.window, n_global),
        _segments(length),
        _bias_fn("none", True),
    )
    blockwise = _blockwise(pattern, length, segments, no_bias)

    def dense(q, k, v):
        return _dense_reference(q, k, v, mask, segments, no_bias)

    grads = jax.jit(
        lambda q, k, v: [jax.grad(lambda *x, f=f: f(*x).sum(), argnums=(0, 1, 2))(q, k, v) for f in (blockwise, dense)]
    )
    got, want = grads(*_qkv(length, seed=2))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_score_counts_are_the_blocks_each_kernel_computes():
    # causal w=8: blocks of 8, each scores itself and the block before: 8 blocks x 8 queries x 16 keys.
    assert SlidingWindow(True, 8).scores(64, 64) == 8 * 8 * 16
    # bidirectional w=8 (+-4): blocks of 4 with one neighbour each side: 16 x 4 x 12.
    assert SlidingWindow(False, 8).scores(64, 64) == 16 * 4 * 12
    # 60 positions pad to 8 blocks of 8; a sequence shorter than a block is one dense block.
    assert SlidingWindow(True, 8).scores(60, 60) == 8 * 8 * 16
    assert SlidingWindow(True, 8).scores(5, 5) == 5 * 5
    # sparse adds the 2 global keys to every block, and 2 global rows over all 64 keys.
    assert LocalGlobal(True, 8, 2).scores(64, 64) == 8 * 8 * (16 + 2) + 2 * 64
    assert FullAttention(True).scores(64, 48) == 64 * 48


def _compiled_flops(pattern, length: int) -> float:
    q, k, v = (jax.ShapeDtypeStruct(x.shape, x.dtype) for x in _qkv(length))
    attend = _blockwise(pattern, length, None, _bias_fn("none", pattern.causal))
    return jax.jit(attend).lower(q, k, v).compile().cost_analysis()["flops"]


def test_windowed_work_grows_linearly_with_length_while_full_grows_quadratically():
    def growth(pattern) -> float:
        return _compiled_flops(pattern, 1024) / _compiled_flops(pattern, 256)

    assert growth(FullAttention(True)) > 12.0
    for pattern in (SlidingWindow(True, 16), SlidingWindow(False, 16), LocalGlobal(True, 16, 4)):
        assert 3.8 < growth(pattern) < 4.4  # 4x the length: 4x the work


def test_relative_buckets_match_t5():
    # Causal, 8 buckets, max distance 32: 0..3 back are exact; then 4 + floor(log(d/4) / log(8) * 4),
    # capped at 7 (d=7: 5.08, d=8: 5.33, d=20: 7.10); the future shares bucket 0.
    offsets = jnp.array([0, -1, -3, -4, -7, -8, -20, -100, -1000, 1, 5])
    np.testing.assert_array_equal(relative_bucket(offsets, False, 8, 32), [0, 1, 3, 4, 5, 5, 7, 7, 7, 0, 0])
    # Bidirectional: 4 buckets per side, 0..1 exact, then 2 + floor(log(d/2) / log(16) * 2), capped at 3
    # (d=3: 2.29, d=7: 2.90, d=9: 3.08); the future is offset by 4 (d=5 ahead: 4 + 2.66).
    offsets = jnp.array([0, -1, -3, -4, -7, -9, -20, -100, -1000, 1, 5])
    np.testing.assert_array_equal(relative_bucket(offsets, True, 8, 32), [0, 1, 2, 2, 2, 3, 3, 3, 3, 5, 6])


def test_alibi_slopes_are_geometric():
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)])
    np.testing.assert_allclose(alibi_slopes(4), [2.0**-i for i in (2, 4, 6, 8)])
