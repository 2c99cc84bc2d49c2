"""model.attention_impl: each implementation agrees with einsum, falls back with one notice, resolves by platform."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model import ModelConfig
from scalelab.model import attention_impls as impls
from scalelab.model.attention import attend, self_attention_inputs
from scalelab.model.config import ConfigError, choices
from scalelab.model.functional import describe
from scalelab.model.masks import FullAttention, KernelRequest, LocalGlobal, SlidingWindow
from tests.model.test_attention import _bias_fn

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8
PATTERNS = {
    "full": lambda causal: FullAttention(causal),
    "sliding": lambda causal: SlidingWindow(causal, 8),
    "sparse": lambda causal: LocalGlobal(causal, 8, 2),
}


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    """Each test sees the notices it causes, however many earlier tests printed them."""
    monkeypatch.setattr(impls, "_shown_notices", set())


def _request(pattern, name, dtype="float32", head_dim=HEAD_DIM):
    return dataclasses.replace(pattern, kernel=KernelRequest(name, dtype, head_dim))


def _segments(length: int, packed: bool) -> np.ndarray | None:
    """None, or row 0 as one document and row 1 packing three (one starts early, one late)."""
    if not packed:
        return None
    cuts = np.searchsorted([3, length - 5], np.arange(length), side="right")
    return np.stack([np.ones(length, np.int32), (cuts + 1).astype(np.int32)])


def _qkv(length: int, kv_heads: int = KV_HEADS, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, length, HEADS, HEAD_DIM), np.float32)
    k, v = (rng.standard_normal((2, length, kv_heads, HEAD_DIM), np.float32) for _ in range(2))
    return q, k, v


def _attention(pattern, length, segments, bias_fn, dtype):
    """f(q, k, v) -> (output, chosen implementation), inputs prepared as a forward pass prepares them."""
    chosen = []

    def f(q, k, v):
        inputs = self_attention_inputs(pattern, length, segments, None, bias_fn)
        chosen.append(inputs.pattern.kernel.name)
        return attend(q, k, v, inputs, dtype).astype(jnp.float32)

    return f, chosen


def _value_and_grads(f, q, k, v):
    weights = np.random.default_rng(9).standard_normal(q.shape).astype(np.float32)  # a loss that mixes outputs
    out = f(q, k, v)
    grads = jax.grad(lambda *x: jnp.sum(f(*x) * weights), argnums=(0, 1, 2))(q, k, v)
    return out, grads


def _compare(name, pattern, length, packed, bias, *, kv_heads=KV_HEADS, dtypes=("float32", "bfloat16")):
    """`name` and einsum agree on outputs and gradients: closely in fp32, within bf16 rounding in bf16."""
    segments, bias_fn = _segments(length, packed), _bias_fn(bias, pattern.causal)
    q, k, v = _qkv(length, kv_heads)
    for dtype in dtypes:
        tested, chosen = _attention(_request(pattern, name, dtype), length, segments, bias_fn, jnp.dtype(dtype))
        reference, _ = _attention(_request(pattern, "einsum", dtype), length, segments, bias_fn, jnp.dtype(dtype))
        got = jax.jit(lambda *x, f=tested: _value_and_grads(f, *x))(q, k, v)
        want = jax.jit(lambda *x, f=reference: _value_and_grads(f, *x))(q, k, v)
        assert set(chosen) == {name}  # it ran, no fallback
        tol = 2e-5 if dtype == "float32" else 3e-2
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("bias", ["none", "relative", "alibi"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", PATTERNS)
def test_xla_agrees_with_einsum_for_every_mask_and_position_bias(kind, causal, bias):
    _compare("xla", PATTERNS[kind](causal), 24, packed=True, bias=bias)


@pytest.mark.parametrize("kind", PATTERNS)
def test_xla_agrees_with_einsum_without_segment_ids(kind):
    _compare("xla", PATTERNS[kind](True), 24, packed=False, bias="none")


@pytest.mark.parametrize("packed", [False, True], ids=["one-document", "packed"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", PATTERNS)
def test_splash_in_interpret_mode_agrees_with_einsum(kind, causal, packed, monkeypatch):
    monkeypatch.setenv("SCALELAB_PALLAS_INTERPRET", "1")
    pattern = {
        "full": FullAttention(causal),
        "sliding": SlidingWindow(causal, 32),
        "sparse": LocalGlobal(causal, 32, 3),
    }
    _compare("splash", pattern[kind], 128, packed, "none", dtypes=("float32",))


def test_splash_runs_plain_multi_head_attention_in_bfloat16(monkeypatch):
    monkeypatch.setenv("SCALELAB_PALLAS_INTERPRET", "1")
    _compare("splash", SlidingWindow(True, 32), 128, True, "none", kv_heads=HEADS, dtypes=("bfloat16",))


def test_a_bias_splash_cannot_take_falls_back_to_einsum_with_one_notice(monkeypatch, capsys):
    monkeypatch.setenv("SCALELAB_PALLAS_INTERPRET", "1")
    pattern, segments, bias_fn = FullAttention(True), _segments(128, True), _bias_fn("alibi", True)
    q, k, v = _qkv(128)
    tested, chosen = _attention(_request(pattern, "splash"), 128, segments, bias_fn, jnp.float32)
    reference, _ = _attention(pattern, 128, segments, bias_fn, jnp.float32)
    for _ in range(2):  # traced twice (a new function each time), told once
        np.testing.assert_array_equal(jax.jit(lambda *x: tested(*x))(q, k, v), jax.jit(reference)(q, k, v))
    assert chosen == ["einsum", "einsum"]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "scalelab: model.attention_impl=splash: splash attention takes no additive position bias "
        "(model.position relative or alibi); einsum computes this attention"
    ]


def test_splash_falls_back_when_the_length_does_not_fill_its_blocks(monkeypatch, capsys):
    monkeypatch.setenv("SCALELAB_PALLAS_INTERPRET", "1")
    inputs = self_attention_inputs(_request(FullAttention(True), "splash"), 96, None, None, lambda rel: None)
    assert inputs.pattern.kernel.name == "einsum"
    assert "multiple of 128 (it is 96)" in capsys.readouterr().err


def test_auto_resolves_by_platform_and_is_einsum_on_a_cpu(monkeypatch):
    assert jax.default_backend() == "cpu"
    assert impls.resolve(KernelRequest("auto")) == "einsum"
    for platform, name in (("gpu", "cudnn"), ("tpu", "splash"), ("cpu", "einsum")):
        monkeypatch.setattr(jax, "default_backend", lambda p=platform: p)
        assert impls.resolve(KernelRequest("auto")) == name
    assert impls.resolve(KernelRequest("xla")) == "xla"


@pytest.mark.parametrize(("name", "needs"), [("cudnn", "GPU"), ("splash", "TPU")])
def test_a_kernel_the_platform_lacks_is_a_config_error_naming_auto(name, needs, monkeypatch):
    monkeypatch.delenv("SCALELAB_PALLAS_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match=f"^model.attention_impl={name} needs a {needs}, but JAX runs on cpu; set "):
        impls.resolve(KernelRequest(name))
    monkeypatch.setenv("SCALELAB_PALLAS_INTERPRET", "1")  # lets splash run interpreted, never cudnn
    if name == "splash":
        assert impls.resolve(KernelRequest(name)) == "splash"
    else:
        with pytest.raises(ConfigError, match=r"model\.attention_impl=auto$"):
            impls.resolve(KernelRequest(name))


def test_a_model_on_a_cpu_rejects_cudnn_when_it_runs(monkeypatch):
    cfg = ModelConfig(vocab_size=31, d_model=32, n_layers=1, n_heads=4, max_seq_len=8, attention_impl="cudnn")
    model = describe(cfg)
    with pytest.raises(ConfigError, match=r"model\.attention_impl=cudnn needs a GPU"):
        jax.eval_shape(lambda: model.apply(model.init(0), {"inputs": jnp.zeros((1, 8), jnp.int32)}))


@pytest.mark.parametrize(
    ("dtype", "head_dim", "length", "bias", "reason"),
    [
        ("bfloat16", 64, 24, "alibi", None),
        ("bfloat16", 128, 24, "none", None),
        ("float32", 64, 24, "none", "needs bfloat16 inputs (model.dtype is float32)"),
        ("bfloat16", 256, 24, "none", "multiple of 8 up to 128 (it is 256)"),
        ("bfloat16", 60, 24, "none", "multiple of 8 up to 128 (it is 60)"),
        ("bfloat16", 64, 25, "relative", "with a position bias needs an even length (it is 25)"),
        ("bfloat16", 64, 25, "none", None),
    ],
)
def test_cudnn_support_rules_and_what_falls_back(dtype, head_dim, length, bias, reason, monkeypatch, capsys):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    pattern = _request(FullAttention(True), "auto", dtype, head_dim)
    inputs = self_attention_inputs(pattern, length, None, None, _bias_fn(bias, True))
    assert inputs.pattern.kernel.name == ("cudnn" if reason is None else "einsum")
    err = capsys.readouterr().err
    assert (err == "") if reason is None else (reason in err and err.count("\n") == 1)


@pytest.mark.parametrize(
    ("pattern", "packed", "own_mask"),
    [
        (FullAttention(True), False, True),
        (FullAttention(False), False, True),
        (SlidingWindow(True, 8), False, True),
        (SlidingWindow(False, 8), False, False),  # cuDNN has no right-hand window
        (LocalGlobal(True, 8, 2), False, False),
        (FullAttention(True), True, False),  # packed documents
    ],
)
def test_cudnn_keeps_its_own_masks_and_gets_a_dense_one_otherwise(pattern, packed, own_mask, monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    segments = _segments(24, packed)
    inputs = self_attention_inputs(_request(pattern, "cudnn", "bfloat16"), 24, segments, None, lambda rel: None)
    assert inputs.pattern.kernel.name == "cudnn"
    if own_mask:
        assert inputs.mask is None
    else:
        np.testing.assert_array_equal(inputs.mask, impls.dense_mask(pattern, 24, segments))


def test_attention_impl_is_a_config_choice_read_from_its_registry():
    assert list(choices()["attention_impl"]) == ["auto", "einsum", "xla", "cudnn", "splash"]
    assert ModelConfig().attention_impl == "auto"
    with pytest.raises(ConfigError, match=r"^model\.attention_impl: unknown value 'flash'; choose one of auto, einsum"):
        ModelConfig(attention_impl="flash")


def test_auto_on_a_cpu_traces_the_same_program_as_einsum():
    cfg = ModelConfig(vocab_size=31, d_model=32, n_layers=2, n_heads=4, max_seq_len=16, attention="sliding", window=4)
    batch = {"inputs": jnp.zeros((2, 16), jnp.int32), "segment_ids": jnp.ones((2, 16), jnp.int32)}
    programs = []
    for name in ("auto", "einsum"):
        model = describe(dataclasses.replace(cfg, attention_impl=name))
        params = jax.eval_shape(lambda model=model: model.init(0))
        programs.append(jax.jit(model.apply).lower(params, batch).as_text())
    assert programs[0] == programs[1]


def test_a_model_trains_through_xla_attention(tmp_path):
    from scalelab.cli import main

    run_dir = tmp_path / "run"
    settings = [
        "model.attention_impl=xla",
        "train.steps=3",
        "train.eval_every=3",
        "train.batch_size=8",
        "schedule.warmup_steps=1",
    ]
    args = ["train", "gpt-tiny", "--quiet", "--run-dir", str(run_dir)]
    assert main(args + [x for s in settings for x in ("--set", s)]) == 0
    assert "attention_impl: xla" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "metrics.jsonl").read_text().count('"loss"') == 3


def test_a_model_with_splash_attention_gives_einsums_logits(monkeypatch, capsys):
    monkeypatch.setenv("SCALELAB_PALLAS_INTERPRET", "1")
    cfg = ModelConfig(
        vocab_size=31, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, dtype="float32",
        init_std=0.5, attention="sparse", window=32, global_tokens=2,
    )  # fmt: skip
    batch = {"inputs": jnp.arange(256).reshape(2, 128) % 31, "segment_ids": jnp.asarray(_segments(128, True))}
    calls = []
    splash_attend = impls.SplashAttention.attend
    monkeypatch.setattr(impls.SplashAttention, "attend", staticmethod(lambda *a: calls.append(1) or splash_attend(*a)))
    logits = {}
    for name in ("splash", "einsum"):
        model = describe(dataclasses.replace(cfg, attention_impl=name))
        logits[name] = jax.jit(model.apply)(model.init(0), batch)
    np.testing.assert_allclose(logits["splash"], logits["einsum"], rtol=1e-4, atol=1e-4)
    assert calls and capsys.readouterr().err == ""  # splash ran, and nothing fell back
