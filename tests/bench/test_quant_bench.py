"""`scalelab bench quant`: its options parse, and its profile column tells integer from widened matmuls."""

import jax
import jax.numpy as jnp
import pytest

from scalelab.bench.quant_bench import host, markdown, matmul_types
from scalelab.cli import main
from scalelab.inference.decode import init_cache
from scalelab.inference.quantize import quantize
from scalelab.model import ModelConfig
from scalelab.model.functional import describe

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=16, dtype="bfloat16")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the dot kinds are XLA's CPU backend's")
def test_the_decode_steps_matmuls_are_int8_for_w8a8_and_widened_for_int8_weights():
    model = describe(CFG)
    params = jax.jit(model.init, static_argnums=0)(0)
    tokens = jnp.zeros((4, 1), jnp.int32)  # XLA's CPU backend multiplies int8 natively from 4 rows up
    cache = init_cache(CFG, 4, 8)
    stored = jax.jit(lambda p: [quantize(p, model.axes, mode) for mode in ("w8a8", "int8")])(params)
    w8a8, weight_only = (matmul_types(model.graphdef, q, cache, tokens) for q in stored)
    # q, k, v, o, the FFN's two and the tied table's logits multiply int8 by int8; attention's two stay float.
    assert w8a8.startswith("7 s8*s8->s32") and "s8" not in weight_only, (w8a8, weight_only)
    assert sum(int(part.split()[0]) for part in weight_only.split(", ")) == 9


def test_the_table_heads_with_the_host_and_its_dot_flags():
    facts = host()
    assert set(facts["flags"]) >= {"avx512_vnni", "amx_int8"} and facts["backend"] == jax.default_backend()
    row = {
        "mode": "w8a8",
        "eval_loss": 2.5,
        "loss_vs_bf16": 1.001,
        "weight_bytes": 2**20,
        "bytes_vs_fp32": 0.26,
        "cache_bytes_per_token": 512,
        "tokens_per_s": 900.0,
        "speed_vs_bf16": 1.3,
        "matmuls": "7 s8*s8->s32",
    }
    width = {"d_model": 512, "bf16_tokens_per_s": 700.0, "w8a8_tokens_per_s": 1050.0, "w8a8_vs_bf16": 1.5}
    text = markdown({"date": "2026-01-01", "host": facts, "load_average": 1.0, "rows": [row], "widths": [width]})
    assert "| w8a8 | 2.5000 | 1.0010x | 1.00 MiB | 0.260x | 512 | 900 | 1.30x | 7 s8*s8->s32 |" in text
    assert text.endswith(
        "| d_model (random weights) | bf16 tokens/s | w8a8 tokens/s | w8a8 vs bf16 |\n|---|---|---|---|\n| 512 | 700 | 1050 | 1.50x |"
    )
    assert text.startswith(f"2026-01-01, {facts['cpu']} (avx512_vnni ")


def test_bench_quant_parses_its_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "quant", "--help"])
    assert done.value.code == 0
    assert "--run-dir" in capsys.readouterr().out
