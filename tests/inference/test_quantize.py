"""Post-training quantization: grids and their error bounds, bytes, integer matmuls, calibration, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.errors import UserError
from scalelab.inference import quant_modes
from scalelab.inference.calibrate import calibrate
from scalelab.inference.decode import extend, generate, init_cache
from scalelab.inference.quantize import QuantizedWeight, check_params, dequantize, input_axes, quantize, report
from scalelab.model import ModelConfig
from scalelab.model.functional import describe
from scalelab.train.qat import grouped_shape

CFG = ModelConfig(
    vocab_size=61,
    d_model=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    activation="swiglu",
    max_seq_len=24,
    dtype="float32",
    init_std=0.1,
    tie_embeddings=False,
)


@pytest.fixture(scope="module")
def model_params():
    model = describe(CFG)
    return model, jax.jit(model.init, static_argnums=0)(0)


def _quantize(params, axes, name, scales=None):
    """quantize, compiled as one program (op by op, each small op compiles on its own)."""
    return jax.jit(lambda p: quantize(p, axes, name, scales))(params)


def _flat(tree):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _quantized(tree):
    return {
        jax.tree_util.keystr(p): x
        for p, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, QuantizedWeight))[0]
        if isinstance(x, QuantizedWeight)
    }


def test_input_axes_follow_the_logical_names():
    assert input_axes(("layers", "embed", "heads", "head_dim")) == (1,)  # wq: d_model in
    assert input_axes(("layers", "heads", "head_dim", "embed")) == (1, 2)  # wo: heads x head_dim in
    assert input_axes(("layers", "mlp", "embed")) == (1,)  # w_out
    assert input_axes(("vocab", "embed")) == (1,)  # token table: logits contract d_model
    assert input_axes(("embed", "vocab")) == (0,)  # head


@pytest.mark.parametrize("name, qmax, group", [("int8", 127, 0), ("int4", 7, 0), ("int4-g32", 7, 32)])
def test_every_weight_rounds_to_nearest_on_its_grid(model_params, name, qmax, group):
    model, params = model_params
    quantized = _quantize(params, model.axes, name)
    widened = _quantized(quantized)
    wide = {k: np.asarray(v) for k, v in _flat(jax.jit(dequantize)(quantized)).items()}
    ints = {
        k: np.asarray(v)
        for k, v in jax.jit(lambda q: {k: w.integers() for k, w in _quantized(q).items()})(quantized).items()
    }
    # wq, wk, wv, wo, w_in, w_gate, w_out, the token table and the head; norms stay fp32.
    assert len(widened) == 9
    flat = {k: np.asarray(v) for k, v in _flat(params).items()}
    for path, q in widened.items():
        w = flat[path]
        assert ints[path].dtype == np.int8 and ints[path].shape == w.shape
        # int8 takes a byte per weight, int4 half of one (an odd last axis gets a pad nibble)
        assert q.values.nbytes == (w.size if qmax == 127 else w.size // w.shape[-1] * math.ceil(w.shape[-1] / 2))
        assert np.abs(ints[path].astype(np.int32)).max() == qmax  # each group's largest weight maps to qmax
        fan_in = math.prod(w.shape[i] for i in input_axes(q.axes))
        assert q.scale.size == w.size // (group or fan_in)
        # Round to nearest: every element within half a step of its group's scale (plus fp32 rounding).
        error = np.abs(wide[path] - w)
        scale = (np.ones(grouped_shape(w.shape, q.axes, group)) * np.asarray(q.scale)).reshape(w.shape)
        bound = scale / 2 + 2 * np.abs(w) * np.finfo(np.float32).eps
        assert np.all(error <= bound), path
        assert np.max(error / bound) > 0.9, path  # the bound is tight: some sit near half a step


def test_groups_err_less_than_one_scale_per_channel(model_params):
    model, params = model_params
    errors = {}
    for name in ("int4", "int4-g64", "int4-g32"):
        wide = jax.jit(dequantize)(_quantize(params, model.axes, name))
        errors[name] = float(
            jnp.mean(jnp.abs(wide["layers"]["blocks"]["ffn"]["w_out"] - params["layers"]["blocks"]["ffn"]["w_out"]))
        )
    assert errors["int4-g32"] < errors["int4-g64"] < errors["int4"]


def test_the_whole_model_takes_the_bytes_of_its_grid(model_params):
    model, params = model_params
    fp32 = sum(x.size * 4 for x in jax.tree.leaves(params))
    norms = 4 * CFG.d_model * (2 * CFG.n_layers + 1)  # two per block and the final one stay fp32
    for name, bits, per_scale in (("int8", 8, None), ("int4-g32", 4, 32)):
        r = report(params, _quantize(params, model.axes, name))
        weights = sum(x.size for x in jax.tree.leaves(params)) - norms // 4
        values = weights * bits // 8
        assert r.total_before == fp32
        assert r.total_after > values + norms  # plus the fp32 scales
        assert r.total_after <= values + norms + 4 * weights / (per_scale or CFG.d_model) + 4 * 2 * CFG.d_model
        assert r.ratio <= (0.30 if bits == 8 else 0.17), (name, r.ratio)
        assert f"{name} weights" in r.describe()


def test_int8_logits_stay_within_the_rounding_budget_of_fp32(model_params):
    model, params = model_params
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, CFG.vocab_size)
    reference = jax.jit(model.apply)(params, {"inputs": tokens})
    logits, _ = extend(model.graphdef, _quantize(params, model.axes, "int8"), init_cache(CFG, 2, 16), tokens)
    relative = float(jnp.linalg.norm(logits - reference) / jnp.linalg.norm(reference))
    # Rounding errs uniformly within +-s/2, s = max|w|/127, so a matmul output with n inputs is off by
    # max|w| / (127 sqrt(12) std(w)) of its size: ~sqrt(2 ln n) / 440 ~ 0.7% for Gaussian weights, n = 64.
    # 14 block matmuls, the head and the embedding rows add in quadrature.
    budget = math.sqrt(16) * math.sqrt(2 * math.log(64)) / (127 * math.sqrt(12))
    assert 0 < relative < budget


def test_weight_only_decoding_is_decoding_the_dequantized_weights(model_params):
    model, params = model_params
    prompt = jax.random.randint(jax.random.key(2), (2, 5), 0, CFG.vocab_size)
    for name in ("int4-g32",):  # int8: tests/inference/test_decode_t5.py
        quantized = _quantize(params, model.axes, name)
        narrow = generate(CFG, model.graphdef, quantized, prompt, new_tokens=8)
        np.testing.assert_array_equal(
            narrow, generate(CFG, model.graphdef, jax.jit(dequantize)(quantized), prompt, new_tokens=8)
        )


def test_w8a8_multiplies_int8_by_int8_into_int32_and_rescales():
    w = jax.random.normal(jax.random.key(0), (32, 48))
    x = jax.random.normal(jax.random.key(1), (2, 3, 32))
    q = quantize({"w": w}, {"w": jax.sharding.PartitionSpec("embed", "mlp")}, "w8a8")["w"]
    got = q.quantized_matmul("btd,df->btf", x, jnp.float32)
    # The same product by hand: each token's activations on their own int8 grid, times the int8 weights.
    x_scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127
    x_int = jnp.round(x / x_scale)
    expected = jnp.einsum("btd,df->btf", x_int * x_scale, q.integers().astype(jnp.float32) * q.scale.reshape(1, 48))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda x: q.quantized_matmul("btd,df->btf", x, jnp.float32))(x))
    assert "i8[2,3,32]" in jaxpr and "preferred_element_type=int32" in jaxpr


def test_fp8_multiplies_float8_by_float8():
    w = jax.random.normal(jax.random.key(0), (32, 48))
    x = jax.random.normal(jax.random.key(1), (2, 3, 32))
    q = quantize({"w": w}, {"w": jax.sharding.PartitionSpec("embed", "mlp")}, "fp8")["w"]
    assert q.values.dtype == jnp.float8_e4m3fn
    got = q.quantized_matmul("btd,df->btf", x, jnp.float32)
    x_scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 448
    x_fp8 = (x / x_scale).astype(jnp.float8_e4m3fn).astype(jnp.float32) * x_scale
    expected = jnp.einsum("btd,df->btf", x_fp8, q.values.astype(jnp.float32) * q.scale.reshape(1, 48))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(got - jnp.einsum("btd,df->btf", x, w)))) > 1e-3  # it did round
    jaxpr = str(jax.make_jaxpr(lambda x: q.quantized_matmul("btd,df->btf", x, jnp.float32))(x))
    assert "f8_e4m3fn[2,3,32]" in jaxpr


def test_calibrated_scales_are_each_layers_largest_input(model_params):
    model, params = model_params
    batches = [{"inputs": jax.random.randint(jax.random.key(i), (2, 16), 0, CFG.vocab_size)} for i in range(2)]
    scales = calibrate(model, params, batches)
    wq = scales["['layers']['blocks']['attn']['wq']"]
    assert wq.shape == (CFG.n_layers,) and bool(jnp.all(wq > 0))
    # The head's input is the final norm's output: its largest |value| over both batches, / 127.
    through_identity = jax.jit(lambda p, b: model.apply({**p, "head": jnp.eye(CFG.d_model, CFG.vocab_size)}, b))
    final = [float(jnp.max(jnp.abs(through_identity(params, b)[..., : CFG.d_model]))) for b in batches]
    np.testing.assert_allclose(float(scales["['head']"]), max(final) / 127, rtol=1e-5)
    quantized = _quantize(params, model.axes, "w8a8-calibrated", scales)
    apply = jax.jit(model.apply)
    reference = apply(params, batches[0])
    relative = float(jnp.linalg.norm(apply(quantized, batches[0]) - reference) / jnp.linalg.norm(reference))
    assert relative < 0.05


def test_bad_input_gets_one_clear_line(model_params, monkeypatch):
    model, params = model_params
    with pytest.raises(UserError, match="the calibration set is empty"):
        calibrate(model, params, [])
    with pytest.raises(UserError, match="needs activation scales"):
        quantize(params, model.axes, "w8a8-calibrated")
    bert = describe(ModelConfig(family="bert", vocab_size=61, d_model=64, n_layers=2, n_heads=4, max_seq_len=24))
    with pytest.raises(UserError, match=r"not a model.family=gpt model .* quantize a checkpoint with the config"):
        check_params(jax.eval_shape(lambda: bert.init(0)), model.shapes, "gpt")
    check_params(params, model.shapes, "gpt")  # its own parameters pass
    monkeypatch.setattr(quant_modes, "backend_problem", lambda m: "no fp8 dot" if m.float8 else None)
    with pytest.raises(
        UserError, match=r"--quantize fp8: the cpu backend cannot run it \(no fp8 dot\); it runs int8, "
    ):
        quantize(params, model.axes, "fp8")
