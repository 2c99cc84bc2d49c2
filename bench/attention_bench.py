"""Attention memory and time against sequence length: full vs sliding-window vs local+global.

Runs the model's own attention kernels (model/attention.py), forward and backward, at a
fixed window for each sequence length. Memory is the compiled step's temporary buffers
(XLA memory analysis); time is the median of several timed calls. Full attention is only
run where its temporaries fit the memory budget; beyond that it is compiled, measured and
reported as skipped. Writes bench/results/attention.json.

    python -m scalelab.bench.attention_bench [--lengths 1024 2048 ...] [--window 256] [--budget-gb 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.bench.report import RESULTS_DIR, write_json
from scalelab.model.attention import ATTENTION_KERNELS, self_attention_inputs
from scalelab.model.masks import FullAttention, LocalGlobal, Pattern, SlidingWindow

# `scalelab bench --quick`: short sequences, one timed call each (read by bench/suite.py without importing this).
QUICK_ARGS = ["--lengths", "512", "1024", "2048", "--repeats", "1"]


def patterns(causal: bool, window: int, global_tokens: int) -> dict[str, Pattern]:
    """The three patterns compared, for one direction of attention."""
    return {
        "full": FullAttention(causal),
        "sliding": SlidingWindow(causal, window),
        "sparse": LocalGlobal(causal, window, global_tokens),
    }


def attention_step(pattern: Pattern, length: int, dtype: jnp.dtype):
    """f(q, k, v) -> gradients of sum(attention) w.r.t. q, k and v: one forward and backward pass."""

    def loss(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        inputs = self_attention_inputs(pattern, length, None, None, lambda relative: None)
        return ATTENTION_KERNELS[type(pattern)].attend(q, k, v, inputs, dtype).astype(jnp.float32).sum()

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def measure(pattern: Pattern, args: argparse.Namespace, length: int) -> dict[str, Any]:
    """Compile one pattern at one length; time it unless its temporaries exceed the budget."""
    dtype = jnp.dtype(args.dtype)
    shapes = [(args.batch, length, args.heads, args.head_dim)] + [
        (args.batch, length, args.kv_heads, args.head_dim)
    ] * 2
    abstract = [jax.ShapeDtypeStruct(s, dtype) for s in shapes]
    step = attention_step(pattern, length, dtype)
    start = time.perf_counter()
    compiled = step.lower(*abstract).compile()
    temp = int(compiled.memory_analysis().temp_size_in_bytes)
    # Training FLOPs as model/counting.py charges them: 3 x (QK^T and AV over the computed pairs).
    counted = 3 * 2 * 2 * args.heads * args.head_dim * pattern.scores(length, length) * args.batch
    record: dict[str, Any] = {
        "length": length,
        "temp_bytes": temp,
        "counted_flops": counted,
        "compile_s": round(time.perf_counter() - start, 3),
    }
    if temp > args.budget_gb * 2**30:
        record["skipped"] = f"temporaries {temp / 2**30:.1f} GiB exceed the {args.budget_gb:g} GiB budget"
        return record
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(s, np.float32), dtype) for s in shapes)
    samples = []  # compiled ahead of time, so the first call is timed like the rest
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        samples.append(time.perf_counter() - start)
    record["seconds"] = statistics.median(samples)
    record["tflops_per_s"] = counted / record["seconds"] / 1e12
    return record


def _table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"{'pattern':<8} {'length':>7} {'temp MiB':>10} {'fwd+bwd ms':>11} {'counted GFLOP':>14}"]
    for name, records in results.items():
        for r in records:
            timing = f"{1e3 * r['seconds']:>11.1f}" if "seconds" in r else f"{'skipped':>11}"
            lines.append(
                f"{name:<8} {r['length']:>7} {r['temp_bytes'] / 2**20:>10.1f} {timing} {r['counted_flops'] / 1e9:>14.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print a table and write the JSON results."""
    parser = argparse.ArgumentParser(
        prog="python -m scalelab.bench.attention_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--window", type=int, default=256, help="sliding and sparse window w")
    parser.add_argument("--global-tokens", type=int, default=16, help="sparse: leading global positions")
    parser.add_argument("--bidirectional", action="store_true", help="encoder attention (+-w/2) instead of causal")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per point (median reported)")
    parser.add_argument(
        "--budget-gb", type=float, default=3.0, help="skip running points whose temporaries exceed this"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "attention.json", help="results JSON")
    args = parser.parse_args(argv)

    results: dict[str, list[dict[str, Any]]] = {}
    for name, pattern in patterns(not args.bidirectional, args.window, args.global_tokens).items():
        results[name] = []
        for length in args.lengths:
            record = measure(pattern, args, length)
            results[name].append(record)
            status = record.get("skipped") or f"{1e3 * record['seconds']:.1f} ms"
            print(f"{name:<8} n={length:<6} temp {record['temp_bytes'] / 2**20:9.1f} MiB  {status}", flush=True)
    device = jax.devices()[0]
    report = {
        "benchmark": "attention forward+backward vs sequence length",
        "settings": {key: value for key, value in vars(args).items() if key != "out"},
        "host": {
            "device": f"{device.platform} ({device.device_kind})",
            "devices": jax.device_count(),
            "jax": jax.__version__,
            "python": platform.python_version(),
            "load_average": os.getloadavg()[0],
        },
        "results": results,
    }
    write_json(args.out, report)
    print(_table(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
