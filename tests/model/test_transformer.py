"""Decoder behaviour: causality, scan vs unrolled, remat, precision."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model import ModelConfig
from scalelab.model.functional import describe
from scalelab.model.stack import REMAT_POLICIES
from scalelab.train.steps import cross_entropy

TINY = ModelConfig(vocab_size=61, d_model=32, n_layers=3, n_heads=4, max_seq_len=16, dtype="float32")


def _tokens(seed: int, shape=(2, 12)) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), shape, 0, TINY.vocab_size)


@pytest.mark.parametrize("position", ["rope", "learned", "sinusoidal"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_changing_future_tokens_never_changes_past_logits(position, activation):
    cfg = dataclasses.replace(TINY, position=position, activation=activation, n_kv_heads=2)
    model = describe(cfg)
    params = model.init(0)
    tokens = _tokens(1)
    t = 5
    changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 7) % cfg.vocab_size)
    before = model.apply(params, {"inputs": tokens})
    after = model.apply(params, {"inputs": changed})
    np.testing.assert_array_equal(before[:, : t + 1], after[:, : t + 1])
    assert not np.allclose(before[:, t + 1 :], after[:, t + 1 :])


def test_segment_ids_keep_attention_within_a_document():
    model = describe(TINY)
    params = model.init(0)
    tokens = _tokens(2, (1, 10))
    segments = jnp.array([[0] * 4 + [1] * 6])
    positions = jnp.array([list(range(4)) + list(range(6))])
    packed = model.apply(params, {"inputs": tokens, "segment_ids": segments, "positions": positions})
    alone = model.apply(params, {"inputs": tokens[:, 4:]})
    np.testing.assert_allclose(packed[:, 4:], alone, rtol=1e-5, atol=1e-5)


def test_scanned_and_unrolled_layers_agree():
    looped = describe(dataclasses.replace(TINY, unroll_max_layers=0))
    unrolled = describe(dataclasses.replace(TINY, scan_layers=False))
    params = looped.init(0)
    tokens = {"inputs": _tokens(3)}
    np.testing.assert_allclose(looped.apply(params, tokens), unrolled.apply(params, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("n_layers", "unroll_max_layers", "remat", "loops"),
    [
        (3, None, "none", False),
        (16, None, "none", False),  # a CPU unrolls up to 16 by default
        (17, None, "none", True),
        (3, 0, "none", True),
        (6, 6, "none", False),
        (7, 6, "none", True),
        (3, None, "full", True),  # remat keeps the loop so the recomputation stays separate
    ],
)
def test_the_layer_loop_is_unrolled_up_to_the_configured_depth(n_layers, unroll_max_layers, remat, loops):
    cfg = dataclasses.replace(TINY, n_layers=n_layers, unroll_max_layers=unroll_max_layers, remat=remat)
    model = describe(cfg)
    params = jax.eval_shape(lambda: model.init(0))
    hlo = jax.jit(model.apply).lower(params, {"inputs": _tokens(3)}).as_text()
    assert ("stablehlo.while" in hlo) == loops


@pytest.mark.parametrize(
    ("platform", "n_layers", "loops"),
    [
        ("gpu", 32, False),  # on an H200 the loop's stack copies cost the gpt-1b rung 11% of its step
        ("gpu", 33, True),
        ("tpu", 4, False),  # unmeasured: TPUs keep the loop from 5 layers up
        ("tpu", 5, True),
    ],
)
def test_each_platform_unrolls_up_to_its_default_depth(monkeypatch, platform, n_layers, loops):
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    model = describe(dataclasses.replace(TINY, n_layers=n_layers))  # float32: auto attention stays einsum
    params = jax.eval_shape(lambda: model.init(0))
    hlo = jax.jit(model.apply).lower(params, {"inputs": _tokens(3)}).as_text()
    assert ("stablehlo.while" in hlo) == loops


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])  # every policy a config accepts
def test_remat_gives_the_same_loss_and_gradients(policy):
    plain = describe(TINY)
    remat = describe(dataclasses.replace(TINY, remat=policy))
    params = plain.init(0)
    tokens = _tokens(4)
    batch = {"inputs": tokens, "targets": jnp.roll(tokens, -1, axis=1), "weights": jnp.ones(tokens.shape)}

    def loss(model, p):
        return cross_entropy(model.apply(p, batch), batch["targets"], batch["weights"])[0]

    (l0, g0), (l1, g1) = (jax.value_and_grad(lambda p, m=m: loss(m, p))(params) for m in (plain, remat))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g0, g1)


def test_bfloat16_logits_track_float32_within_tolerance():
    """bf16 activations with fp32 accumulation stay within 5e-2 (absolute) of the fp32 logits."""
    fp32 = describe(TINY)
    bf16 = describe(dataclasses.replace(TINY, dtype="bfloat16"))
    params = fp32.init(0)
    batch = {"inputs": _tokens(5)}
    ref, low = fp32.apply(params, batch), bf16.apply(params, batch)
    assert low.dtype == jnp.float32  # logits for the loss stay fp32
    np.testing.assert_allclose(low, ref, atol=5e-2)


def test_parameters_are_fp32_and_all_carry_logical_axes():
    model = describe(dataclasses.replace(TINY, dtype="bfloat16", tie_embeddings=False, use_bias=True))
    for shape, spec in zip(jax.tree.leaves(model.shapes), jax.tree.leaves(model.axes), strict=True):
        assert shape.dtype == jnp.float32
        assert len(spec) == len(shape.shape) and all(isinstance(name, str) for name in spec)


def test_dropout_is_keyed_and_off_in_evaluation():
    model = describe(dataclasses.replace(TINY, dropout=0.5))
    params = model.init(0)
    batch = {"inputs": _tokens(6)}
    key = jax.random.key(0)
    np.testing.assert_array_equal(
        model.apply(params, batch, dropout_key=key), model.apply(params, batch, dropout_key=key)
    )
    assert not np.allclose(model.apply(params, batch, dropout_key=key), model.apply(params, batch))
