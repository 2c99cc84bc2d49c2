"""int8 weight-only quantization: per-channel round trip, logits near fp32, a quarter of the bytes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.inference.decode import extend, generate, init_cache
from scalelab.inference.quantize import dequantize, input_axes, quantize, report
from scalelab.model import ModelConfig
from scalelab.model.counting import is_matmul_weight
from scalelab.model.functional import describe

CFG = ModelConfig(
    vocab_size=61,
    d_model=64,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    activation="swiglu",
    max_seq_len=24,
    dtype="float32",
    init_std=0.1,
    tie_embeddings=False,
)


@pytest.fixture(scope="module")
def quantized():
    model = describe(CFG)
    params = model.init(0)
    values, scales = quantize(params, model.axes)
    return model, params, values, scales


def _flat(tree):
    return dict(jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: x is None))


def test_input_axes_follow_the_logical_names():
    assert input_axes(("layers", "embed", "heads", "head_dim")) == (1,)  # wq: d_model in
    assert input_axes(("layers", "heads", "head_dim", "embed")) == (1, 2)  # wo: heads x head_dim in
    assert input_axes(("layers", "mlp", "embed")) == (1,)  # w_out
    assert input_axes(("embed", "mlp")) == (0,)


def test_matmul_weights_become_int8_with_one_scale_per_output_channel(quantized):
    model, params, values, scales = quantized
    axes, params, values, scales = (_flat(t) for t in (model.axes, params, values, scales))
    chosen = [path for path, a in axes.items() if is_matmul_weight(tuple(a))]
    assert len(chosen) == 7  # wq, wk, wv, wo, w_in, w_gate, w_out
    for path, a in axes.items():
        if path not in chosen:
            assert scales[path] is None and values[path] is params[path], path  # embeddings, head, norms: as they were
            continue
        q, s, w = values[path], scales[path], params[path]
        assert q.dtype == jnp.int8 and s.dtype == jnp.float32
        assert s.shape == tuple(1 if i in input_axes(tuple(a)) else n for i, n in enumerate(w.shape)), path
        assert int(jnp.max(jnp.abs(q.astype(jnp.int32)))) == 127  # each channel's largest weight maps to +-127
        # Round to nearest: every element within half a step of its channel's scale, plus the fp32 rounding
        # of w / s and of q * s (one ulp of |w| each).
        error = jnp.abs(dequantize({"w": q}, {"w": s})["w"] - w)
        assert bool(jnp.all(error <= s / 2 + 2 * jnp.abs(w) * jnp.finfo(jnp.float32).eps)), path
        assert float(jnp.max(error / s)) > 0.45  # the bound is not loose: some elements sit near half a step
    assert scales[next(p for p in axes if "wo" in str(p))].shape == (3, 1, 1, 64)


def test_matmul_weights_take_a_quarter_of_their_bytes(quantized):
    _, params, values, scales = quantized
    r = report(params, values, scales)
    # int8 is 1/4 of fp32; each output channel adds one fp32 scale per `inputs` weights, i.e. 1/inputs of the
    # fp32 bytes. The narrowest input here is d_model = heads x head_dim = 64 (the FFN's output has 4 x 64).
    assert 0.25 < r.matmul_after / r.matmul_before <= 0.25 + 1 / 64
    embeddings = 2 * CFG.vocab_size * CFG.d_model * 4  # token table and untied head stay fp32
    assert r.total_before - r.matmul_before - embeddings == r.total_after - r.matmul_after - embeddings > 0
    assert r.saved == r.matmul_before - r.matmul_after
    assert "saved" in r.describe()


def test_quantized_logits_stay_within_the_rounding_budget_of_fp32(quantized):
    model, params, values, scales = quantized
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, CFG.vocab_size)
    reference = model.apply(params, {"inputs": tokens})
    logits, _ = extend(model.graphdef, values, init_cache(CFG, 2, 16), tokens, scales)
    relative = float(jnp.linalg.norm(logits - reference) / jnp.linalg.norm(reference))
    # Rounding errs uniformly within +-s/2, s = max|w|/127, so a matmul output with n inputs is off by
    # max|w| / (127 sqrt(12) std(w)) of its size: ~sqrt(2 ln n) / 440 ~ 0.7% for Gaussian weights, n = 64.
    # The 21 matmuls of three blocks add in quadrature: sqrt(21) x 0.7% ~ 3.2%.
    budget = math.sqrt(21) * math.sqrt(2 * math.log(64)) / (127 * math.sqrt(12))
    assert 0 < relative < budget
    np.testing.assert_array_less(0.9, float(jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(reference, -1))))


def test_int8_decoding_is_decoding_the_dequantized_weights(quantized):
    model, _, values, scales = quantized
    prompt = jax.random.randint(jax.random.key(2), (2, 5), 0, CFG.vocab_size)
    int8 = generate(CFG, model.graphdef, values, prompt, new_tokens=8, scales=scales)
    widened = generate(CFG, model.graphdef, dequantize(values, scales), prompt, new_tokens=8)
    assert int8.shape == (2, 8)
    np.testing.assert_array_equal(int8, widened)
