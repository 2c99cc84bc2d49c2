"""Decode throughput: KV-cache generation against re-running the whole forward pass per token, and int8 weights.

Run: .venv/bin/python -m scalelab.bench.decode_bench [--quick]. Each contender generates `new` greedy
tokens after a `prompt`-token prompt for a batch of rows, compiled once and timed with the
interleaved windows of bench/measure.py. The uncached baseline runs the full causal forward
over a fixed (prompt + new)-token buffer at every step (one compiled program, no cache).
Writes bench/results/decode.json.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from scalelab.bench.measure import Contender, interleave, load_average
from scalelab.bench.report import RESULTS_DIR, write_json
from scalelab.inference.decode import generate
from scalelab.inference.quantize import quantize, report
from scalelab.model.config import ModelConfig
from scalelab.model.functional import ModelDef, describe

# `scalelab bench --quick`: fewer tokens and rounds (read by bench/suite.py without importing this).
QUICK_ARGS = ["--quick"]
MODEL = ModelConfig(vocab_size=512, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=512)


def uncached_greedy(model: ModelDef, params: dict, prompt: jax.Array, new: int) -> jax.Array:
    """Greedy tokens (batch, new) from the full forward pass over the whole buffer at every step."""

    @jax.jit
    def run(params: dict, prompt: jax.Array) -> jax.Array:
        rows, start = prompt.shape
        buffer = jnp.zeros((rows, start + new), jnp.int32).at[:, :start].set(prompt)

        def step(t: jax.Array, buffer: jax.Array) -> jax.Array:
            logits = model.apply(params, {"inputs": buffer})  # causal: the zeros after t do not matter
            token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False), axis=-1)
            return jax.lax.dynamic_update_index_in_dim(buffer, token.astype(jnp.int32), t, axis=1)

        return jax.lax.fori_loop(start, start + new, step, buffer)[:, start:]

    return run(params, prompt)


def main(argv: list[str] | None = None) -> None:
    """Time cached, int8-cached and uncached greedy decoding and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and rounds")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="compute dtype")
    parser.add_argument("--batch", type=int, default=4, help="rows decoded together")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "decode.json", help="results JSON")
    args = parser.parse_args(argv)
    prompt_len, new, rounds = (32, 32, 2) if args.quick else (64, 64, 3)
    cfg = dataclasses.replace(MODEL, dtype=args.dtype)
    model = describe(cfg)
    params = model.init(0)
    quantized = quantize(params, model.axes, "int8")
    prompt = jax.random.randint(jax.random.key(0), (args.batch, prompt_len), 0, cfg.vocab_size)

    cached = generate(cfg, model.graphdef, params, prompt, new_tokens=new)
    same = bool(jnp.all(cached == uncached_greedy(model, params, prompt, new)))
    contenders = [
        Contender("cached", lambda: generate(cfg, model.graphdef, params, prompt, new_tokens=new)),
        Contender("cached-int8", lambda: generate(cfg, model.graphdef, quantized, prompt, new_tokens=new)),
        Contender("uncached", lambda: uncached_greedy(model, params, prompt, new)),
    ]
    timings = interleave(contenders, rounds=rounds, window_s=2.0)
    tokens = args.batch * new
    result = {
        "model": dataclasses.asdict(cfg),
        "batch": args.batch,
        "prompt": prompt_len,
        "new_tokens": new,
        "greedy_tokens_equal": same,
        "int8": dataclasses.asdict(report(params, quantized)),
        "load_average": load_average(),
        "tokens_per_s": {name: tokens / t.step_s for name, t in timings.items()},
        "best_tokens_per_s": {name: tokens / t.best_step_s for name, t in timings.items()},
    }
    write_json(args.out, result)
    for name, rate in result["tokens_per_s"].items():
        print(f"{name:12s} {rate:10.1f} tokens/s")
    print(f"cached greedy == uncached greedy: {same}; results in {args.out}")


if __name__ == "__main__":
    main()
