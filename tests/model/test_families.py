"""Encoder-only and encoder-decoder models: what each position sees, norms, heads and embeddings."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scalelab.model import ModelConfig
from scalelab.model.blocks import Block
from scalelab.model.functional import describe
from scalelab.model.layers import AttentionInputs
from scalelab.model.masks import FullAttention

BASE = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, max_seq_len=16, window=4, dtype="float32")
# Each family with each pattern and each kind of position signal (absolute, bias, rotary) at least once.
VARIANTS = [("full", "learned"), ("sliding", "alibi"), ("sparse", "relative"), ("sliding", "rope")]


def _tokens(seed: int, shape=(2, 12)) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), shape, 0, BASE.vocab_size)


def _model(family: str, attention: str = "full", position: str = "rope", **overrides):
    cfg = dataclasses.replace(BASE, family=family, attention=attention, position=position, **overrides)
    model = describe(cfg)
    return model, model.init(0), jax.jit(model.apply)


@pytest.mark.parametrize(("attention", "position"), VARIANTS)
def test_the_encoder_sees_the_future(attention, position):
    _, params, apply = _model("bert", attention, position, norm_position="post", norm="layernorm")
    tokens = _tokens(1)
    t = 5
    changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 7) % BASE.vocab_size)
    before, after = apply(params, {"inputs": tokens}), apply(params, {"inputs": changed})
    assert not np.allclose(before[:, t], after[:, t])  # position t sees position t + 1
    if attention == "sliding":  # two layers of +-2 reach 4 positions: position 0 is out of reach of 6
        np.testing.assert_array_equal(before[:, 0], after[:, 0])


@pytest.mark.parametrize(("attention", "position"), VARIANTS)
def test_the_t5_decoder_does_not_see_the_future_but_cross_attends_to_the_encoder(attention, position):
    _, params, apply = _model("t5", attention, position, tie_encoder_decoder_embeddings=False)
    inputs, targets = _tokens(2), _tokens(3, (2, 9))
    t = 4
    batch = {"inputs": inputs, "decoder_inputs": targets}
    future = dict(batch, decoder_inputs=targets.at[:, t + 1 :].set((targets[:, t + 1 :] + 5) % BASE.vocab_size))
    source = dict(batch, inputs=inputs.at[:, -1].set((inputs[:, -1] + 3) % BASE.vocab_size))
    before = apply(params, batch)
    assert before.shape == (2, 9, BASE.vocab_size)
    after = apply(params, future)
    np.testing.assert_array_equal(before[:, : t + 1], after[:, : t + 1])
    assert not np.allclose(before[:, t + 1 :], after[:, t + 1 :])
    # The first decoder position sees only the start token, yet it reads the last encoder token.
    assert not np.allclose(before[:, 0], apply(params, source)[:, 0])


def test_cross_attention_ignores_encoder_padding():
    _, params, apply = _model("t5")
    inputs, targets = _tokens(4), _tokens(5, (2, 6))
    segments = jnp.asarray([[1] * 12, [1] * 7 + [0] * 5])  # row 1: five padding positions
    batch = {"inputs": inputs, "segment_ids": segments, "decoder_inputs": targets}
    padded = dict(batch, inputs=inputs.at[1, 7:].set(0))
    np.testing.assert_allclose(apply(params, batch), apply(params, padded), rtol=1e-6, atol=1e-6)
    unpadded = dict(batch, segment_ids=jnp.ones_like(segments))
    assert not np.allclose(apply(params, batch)[1], apply(params, unpadded)[1])


def test_scanned_and_unrolled_t5_agree():
    model, params, apply = _model("t5", "sparse", "relative")
    unrolled = describe(dataclasses.replace(model.cfg, scan_layers=False))
    batch = {"inputs": _tokens(6), "decoder_inputs": _tokens(7, (2, 5))}
    np.testing.assert_allclose(apply(params, batch), jax.jit(unrolled.apply)(params, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("placement", "unit_rms"), [("post", True), ("pre", False)])
def test_post_norm_normalises_after_each_residual_sum(placement, unit_rms):
    cfg = dataclasses.replace(BASE, norm_position=placement, norm="rmsnorm")
    block = Block(cfg, rngs=nnx.Rngs(params=0))
    x = 3.0 * jax.random.normal(jax.random.key(8), (2, 7, cfg.d_model))
    y = jax.jit(lambda x: block(x, AttentionInputs(pattern=FullAttention(causal=False)), None))(x)
    rms = jnp.sqrt(jnp.mean(jnp.square(y), axis=-1))
    assert np.allclose(rms, 1.0, atol=1e-3) == unit_rms


def test_norm_placement_decides_the_norms_around_the_stack():
    post, _, _ = _model("bert", norm_position="post")
    pre, _, _ = _model("bert", norm_position="pre")
    assert "embed_norm" in post.shapes and "final_norm" not in post.shapes
    assert "final_norm" in pre.shapes and "embed_norm" not in pre.shapes


def test_classifier_reads_the_first_position():
    _, params, apply = _model("bert", n_classes=3)
    tokens = _tokens(9)
    logits = apply(params, {"inputs": tokens})
    assert logits.shape == (2, 1, 3) and logits.dtype == jnp.float32
    assert not np.allclose(logits, apply(params, {"inputs": tokens.at[:, -1].add(1)}))


@pytest.mark.parametrize(
    "cfg",
    [
        dataclasses.replace(BASE, family="bert", position="relative", n_classes=3, use_bias=True),
        dataclasses.replace(BASE, family="t5", position="relative", tie_encoder_decoder_embeddings=False),
        dataclasses.replace(BASE, family="t5", position="learned", tie_embeddings=False, norm_position="post"),
    ],
)
def test_every_parameter_is_fp32_and_carries_logical_axes(cfg):
    model = describe(cfg)
    for shape, spec in zip(jax.tree.leaves(model.shapes), jax.tree.leaves(model.axes), strict=True):
        assert shape.dtype == jnp.float32
        assert len(spec) == len(shape.shape) and all(isinstance(name, str) for name in spec)
