"""µP (model.parametrization=mup): width-scaled init, attention and readout, per-group AdamW rates, and the
coordinate check (each layer's update stays flat across width under µP and grows under standard)."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.bench.mup_coord_check import coordinate_check
from scalelab.inference.decode import extend, init_cache
from scalelab.model import ModelConfig
from scalelab.model.attention import attend, self_attention_inputs
from scalelab.model.config import ConfigError
from scalelab.model.functional import describe
from scalelab.model.masks import FullAttention, KernelRequest, LocalGlobal, SlidingWindow
from scalelab.model.mup import attention_logit_scale, is_hidden_weight
from scalelab.train.config_io import load_config
from scalelab.train.optim import make_optimizer
from tests.model.test_attention import _bias_fn

TINY = ModelConfig(vocab_size=37, d_model=32, n_layers=1, n_heads=2, max_seq_len=16, dtype="float32")
MUP = dataclasses.replace(TINY, parametrization="mup", mup_base_width=8)  # width multiplier 4
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 37, (2, 12)), jnp.int32)


@functools.cache
def _params(cfg: ModelConfig) -> dict:
    return describe(cfg).init(0)


def _random_params(cfg: ModelConfig) -> dict:
    """Parameters of `cfg`'s shapes drawn at random: for tests of the computation, not of the init (faster)."""
    rng = np.random.default_rng(5)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32), describe(cfg).shapes)


def _flat(params) -> dict:
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _axes(cfg) -> dict:
    return {name: tuple(spec) for name, spec in _flat(describe(cfg).axes).items()}


def test_at_the_base_width_mup_is_the_standard_model_bit_for_bit():
    base = dataclasses.replace(MUP, mup_base_width=TINY.d_model)
    standard, mup = describe(TINY), describe(base)
    params = _params(TINY)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(mup.init(0)), strict=True):
        np.testing.assert_array_equal(a, b)
    batch = {"inputs": TOKENS}
    np.testing.assert_array_equal(jax.jit(standard.apply)(params, batch), jax.jit(mup.apply)(params, batch))
    assert attention_logit_scale(base) is None  # the kernels' own 1/sqrt(d_head), not a recomputed equal


def test_hidden_matrices_start_at_std_over_sqrt_m_and_everything_else_as_standard():
    standard, mup = _flat(_params(TINY)), _flat(describe(MUP).init(0))
    axes = _axes(TINY)
    hidden = {name for name in axes if is_hidden_weight(axes[name])}
    assert {name.split("/")[-1] for name in hidden} == {"wq", "wk", "wv", "wo", "w_in", "w_out"}
    for name, value in standard.items():  # the same draws: m = 4 halves the hidden ones exactly
        np.testing.assert_array_equal(mup[name], value / 2 if name in hidden else value, err_msg=name)


def test_readouts_are_multiplied_by_base_over_width_and_a_t5_encoder_output_is_not():
    for family, extra in [("gpt", {"tie_embeddings": False}), ("t5", {})]:
        # A fixed head_dim keeps the attention scale standard, so only the readout multiplier differs.
        cfg = dataclasses.replace(TINY, family=family, head_dim=8, **extra)
        standard, mup = describe(cfg), describe(dataclasses.replace(cfg, parametrization="mup", mup_base_width=8))
        params = _random_params(cfg)
        batch = {"inputs": TOKENS, "decoder_inputs": TOKENS[:, :7]}
        want = jax.jit(standard.apply)(params, batch) / 4
        got = jax.jit(mup.apply)(params, batch)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"{family} {extra}")


def test_the_attention_scale_is_one_over_head_width_relative_to_the_base():
    # A derived head_dim grows with d_model: 16 here, 4 at the base width of 8.
    assert attention_logit_scale(MUP) == pytest.approx(math.sqrt(4) / 16)
    assert attention_logit_scale(TINY) is None
    assert attention_logit_scale(dataclasses.replace(MUP, head_dim=16)) is None  # a fixed head width: more heads


def _attend(pattern, name, bias, scale):
    length = 128 if name == "splash" else 24
    inputs = self_attention_inputs(
        dataclasses.replace(pattern, kernel=KernelRequest(name, "float32", 8)), length, None, None, _bias_fn(bias, True)
    )
    assert inputs.pattern.kernel.name == name  # no fallback

    def f(q, k, v):
        return attend(q, k, v, inputs, jnp.float32, scale)

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, length, 4, 8), np.float32) for _ in range(3))
    return f, (q, k, v)


@pytest.mark.parametrize(
    "name, pattern, bias",
    [
        ("einsum", FullAttention(True), "none"),
        ("einsum", FullAttention(False), "alibi"),
        ("einsum", SlidingWindow(True, 8), "none"),
        ("einsum", LocalGlobal(True, 8, 2), "none"),
        ("xla", FullAttention(True), "none"),
        ("splash", FullAttention(True), "none"),
    ],
)
def test_every_attention_implementation_multiplies_the_logits_by_the_scale_it_is_given(
    name, pattern, bias, monkeypatch
):
    monkeypatch.setenv("SCALELAB_PALLAS_INTERPRET", "1")
    scale = 0.05  # against the default 1/sqrt(8): queries pre-multiplied by scale * sqrt(8) give the same logits
    scaled, (q, k, v) = _attend(pattern, name, bias, scale)
    plain, _ = _attend(pattern, name, bias, None)
    ratio = scale * math.sqrt(8)

    def value_and_grads(f, q):
        weights = np.random.default_rng(2).standard_normal(q.shape).astype(np.float32)
        return jax.value_and_grad(lambda q, k, v: jnp.sum(f(q, k, v) * weights), argnums=(0, 1, 2))(q, k, v)

    got, got_grads = jax.jit(lambda q: value_and_grads(scaled, q))(q)
    want, want_grads = jax.jit(lambda q: value_and_grads(plain, q))(q * ratio)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    want_grads = (want_grads[0] * ratio, *want_grads[1:])  # the chain rule through the pre-multiplied queries
    for a, b in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_cached_decoding_uses_the_same_scale_and_readout_as_the_forward_pass():
    cfg = MUP
    model = describe(cfg)
    params = _random_params(cfg)
    full = model.apply(params, {"inputs": TOKENS})
    cache = init_cache(cfg, batch=2, max_len=12)
    first, cache = extend(model.graphdef, params, cache, TOKENS[:, :8])
    rest, _ = extend(model.graphdef, params, cache, TOKENS[:, 8:])
    np.testing.assert_allclose(
        jnp.concatenate([first, rest], axis=1), full, rtol=0, atol=1e-5 * float(jnp.abs(full).max())
    )


OPTIMIZED = ["model.d_model=32", "model.n_layers=1", "model.vocab_size=37", "optimizer.weight_decay=0.1"]


def _updates(parametrization: str, base: int = 8) -> tuple[dict, jax.tree_util.PyTreeDef]:
    """Two AdamW steps' updates of the same parameters and gradients, and the optimizer state's structure."""
    cfg = load_config(
        "gpt-tiny", [*OPTIMIZED, f"model.parametrization={parametrization}", f"model.mup_base_width={base}"]
    )
    model = describe(cfg.model)
    params = _random_params(TINY)  # one set of parameters for both, so the decay terms compare too
    grads = jax.tree.map(lambda p: np.cos(3 * np.asarray(p)) + 0.1, params)
    tx = make_optimizer(cfg, model.axes)

    @jax.jit
    def two_steps(params, grads):
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(grads, state, params)
        return updates, state

    updates, state = two_steps(params, grads)
    return _flat(updates), jax.tree.structure(state)


def test_adamw_steps_of_hidden_matrices_scale_by_base_over_width_decay_included():
    standard, standard_state = _updates("standard")
    mup, _ = _updates("mup")  # 32 wide over a base of 8: m = 4
    axes = _axes(TINY)
    for name, update in standard.items():
        factor = 0.25 if is_hidden_weight(axes[name]) else 1.0
        np.testing.assert_allclose(mup[name], update * factor, rtol=1e-6, err_msg=name)
    assert _updates("mup", base=32)[1] == standard_state  # at the base width, today's optimizer and state


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"parametrization": "mu"}, "model.parametrization: unknown value 'mu'; choose one of standard, mup"),
        ({"mup_base_width": 0}, "model.mup_base_width must be positive, got 0"),
        ({"parametrization": "mup"}, "model.parametrization=mup needs model.mup_base_width"),
        (
            {"parametrization": "mup", "mup_base_width": 20, "n_heads": 8},
            r"model.mup_base_width \(20\) is not divisible by model.n_heads \(8\)",
        ),
    ],
)
def test_bad_parametrization_keys_are_config_errors_that_name_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(TINY, **overrides)


def test_a_fixed_head_dim_needs_no_base_width_divisible_by_the_heads():
    assert dataclasses.replace(TINY, parametrization="mup", mup_base_width=20, head_dim=4, n_heads=8).head_dim == 4


def test_coordinate_check_each_layer_moves_alike_at_every_width_under_mup_and_grows_under_standard():
    # At the base width (16) both parametrizations are one model, measured once.
    base = coordinate_check("standard", (16,))
    standard, mup = coordinate_check("standard", (128,)), coordinate_check("mup", (128,))
    assert set(base) == {"block 1", "block 2", "logits"}
    for layer, (at_base,) in base.items():
        # Measured: standard grows 31x, 40x and 7x (blocks 1, 2, logits); µP stays within 0.83-0.94.
        assert standard[layer][0] / at_base > 4, layer
        assert 0.6 < mup[layer][0] / at_base < 1.3, layer
