"""Quantization table: eval loss, bytes and decode speed of every quantization mode against bf16, in one run.

Run: scalelab bench quant [--run-dir DIR] [--quick] (or python -m scalelab.bench.quant_bench). Without
--run-dir it trains a small gpt on the embedded corpus (gpt-tiny-text widened to d_model 512; `scalelab data prepare`
and `scalelab tokenizer train` first). Then two short fine-tunes start from that run's weights, the same
steps each: a plain one, the bf16 reference, and one with quantization-aware training on the int4-g32
grid (train.qat_bits=4), so int4 + QAT is compared with a model trained exactly as long.

Per row: eval loss on the run's validation batches and its ratio to bf16's; the whole model's bytes
(embeddings included) and their ratio to fp32; KV-cache bytes per token; greedy decode tokens/s and
the ratio to bf16, timed with bench/measure.py's interleaved windows in this same process; and the
matmuls the compiled decode step runs (operand types from XLA's optimized HLO), which says whether
a mode's integers reach the CPU's int8 dot instructions or are widened first. The host's CPU model
and its int8/bf16 dot flags (avx512_vnni, avx_vnni, amx_int8, amx_bf16) head the table.
Writes bench/results/quant.json.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.bench.measure import Contender, interleave, load_average
from scalelab.bench.quant_options import add_arguments
from scalelab.bench.report import write_json
from scalelab.inference.calibrate import calibrate
from scalelab.inference.decode import extend, generate, init_cache
from scalelab.inference.generate import load_run
from scalelab.inference.quant_modes import MODES, backend_problem
from scalelab.inference.quantize import nbytes, quantize, report
from scalelab.train.steps import cross_entropy

QUICK_ARGS = ["--quick"]
BASE_CONFIG = "gpt-tiny-text"
FAST = ["logging.progress=false", "logging.tensorboard=false", "checkpoint.async_save=false", "train.eval_every=0"]
# d_model 512: w8a8's int8 dots only pay for the activations' quantization and rescaling once the
# matmuls are this wide (docs/quantization.md, "Measured": the speedup against width).
SIZE = ["model.d_model=512", "model.n_layers=2", "model.n_heads=8", "model.max_seq_len=128", "train.seq_len=128"]
CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16")


def host() -> dict[str, Any]:
    """The CPU's model name and which int8/bf16 dot-product flags it has."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"model name\s*:\s*(.+)", text)
    flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split()) if "flags" in text else set()
    return {
        "cpu": name.group(1).strip() if name else "unknown",
        "flags": {f: f in flags for f in CPU_FLAGS},
        "backend": jax.default_backend(),
    }


def _train(config: Any, run_dir: Path, init_from: Path | None = None) -> Path:
    from scalelab.train.loop import train

    train(config, run_dir, quiet=True, init_from=init_from, existing="overwrite")
    return run_dir


def train_runs(work: Path, run_dir: Path | None, steps: int, tune_steps: int, quick: bool) -> tuple[Path, Path]:
    """(bf16 reference, int4-g32 QAT) run directories: both fine-tuned `tune_steps` from the same base run
    (with --quick: gpt-tiny on the synthetic source, which needs no prepared dataset)."""
    from scalelab.train.config_io import load_config

    every = [f"checkpoint.every={tune_steps}"]
    if run_dir is None:
        name, size = ("gpt-tiny", []) if quick else (BASE_CONFIG, SIZE)
        base = load_config(name, [*FAST, *size, f"train.steps={steps}", f"checkpoint.every={steps}"])
        run_dir = _train(base, work / "base")
    tune = [*FAST, *every, f"train.steps={tune_steps}", "schedule.warmup_steps=0"]
    config = Path(run_dir) / "config.yaml"
    reference = _train(load_config(str(config), tune), work / "tuned", init_from=Path(run_dir))
    qat = load_config(str(config), [*tune, "train.qat_bits=4", "train.qat_group_size=32"])
    return reference, _train(qat, work / "qat", init_from=Path(run_dir))


def eval_loss(model: Any, params: Any, batches: list[dict[str, np.ndarray]]) -> float:
    """Mean next-token loss over `batches`, weighted by their loss-bearing tokens."""

    @jax.jit
    def sums(p: Any, b: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        _, ce = cross_entropy(model.apply(p, b), b["targets"], b["weights"])
        weight = b["weights"].astype(jnp.float32).sum()
        return ce * jnp.maximum(weight, 1.0), weight

    totals = [sums(params, b) for b in batches]
    return float(sum(t[0] for t in totals) / max(sum(float(t[1]) for t in totals), 1.0))


def matmul_types(graphdef: Any, params: Any, cache: Any, tokens: jax.Array) -> str:
    """The operand and result types of every dot in one compiled decode step, counted: e.g. '28 s8*s8->s32'."""
    text = extend.lower(graphdef, params, cache, tokens).compile().as_text()
    found = collections.Counter()
    # Instruction names repeat across computations (param_0, ...), so types are looked up per computation.
    for computation in re.split(r"\n(?=\S)", text):
        types = dict(re.findall(r"%(\S+) = (\w+)\[", computation))
        for result, a, b in re.findall(r"= (\w+)\[[^\n]*? dot\(%([^,\s)]+), %([^,\s)]+)\)", computation):
            found[f"{types.get(a, '?')}*{types.get(b, '?')}->{result}"] += 1
    return ", ".join(f"{n} {kind}" for kind, n in found.most_common())


@dataclasses.dataclass
class Row:
    """One line of the table: how the model is stored and decoded."""

    name: str
    params: Any
    kv_dtype: str = "model"
    source: str = "tuned"  # which run's weights: tuned (the bf16 reference run) or qat


def width_sweep(widths: list[int], batch: int, prompt_len: int, new: int, rounds: int, window: float) -> list[dict]:
    """w8a8 against bf16 decode tokens/s at each d_model, random weights (2 layers, head_dim 64, vocab 512):
    how the int8 dots' gain grows with the width of the matmuls, apart from any one trained model."""
    from scalelab.model.config import ModelConfig
    from scalelab.model.functional import describe

    rows = []
    for width in widths:
        cfg = ModelConfig(
            vocab_size=512, d_model=width, n_layers=2, n_heads=max(width // 64, 1), max_seq_len=prompt_len + new
        )
        model = describe(cfg)
        fp32 = jax.jit(model.init, static_argnums=0)(0)
        stored = {
            "bf16": jax.tree.map(lambda x: x.astype(jnp.bfloat16), fp32),
            "w8a8": quantize(fp32, model.axes, "w8a8"),
        }
        prompt = jax.random.randint(jax.random.key(0), (batch, prompt_len), 0, cfg.vocab_size)
        contenders = [
            Contender(name, lambda p=p, c=cfg, m=model, t=prompt: generate(c, m.graphdef, p, t, new_tokens=new))
            for name, p in stored.items()
        ]
        timings = interleave(contenders, rounds=rounds, window_s=window)
        rate = {name: batch * new / t.step_s for name, t in timings.items()}
        rows.append(
            {
                "d_model": width,
                **{f"{k}_tokens_per_s": v for k, v in rate.items()},
                "w8a8_vs_bf16": rate["w8a8"] / rate["bf16"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Train (or load), quantize every way, measure, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    steps, tune, rounds, window = (60, 20, 2, 0.5) if args.quick else (args.steps, args.tune_steps, 5, 2.0)
    with tempfile.TemporaryDirectory(prefix="quant-bench-") as work:
        started = time.perf_counter()
        reference_dir, qat_dir = train_runs(Path(work), args.run_dir, steps, tune, args.quick)
        train_s = time.perf_counter() - started
        runs = {"tuned": load_run(reference_dir), "qat": load_run(qat_dir)}
    ref = runs["tuned"]
    cfg, model = ref.cfg.model, ref.model
    from scalelab.data import make_source

    source = make_source(ref.cfg)
    batches = [source.eval_batch(i) for i in range(ref.cfg.train.eval_batches)]
    calibration = [source.batch(i) for i in range(args.calibration_batches)]
    fp32 = ref.params
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), fp32)
    rows = [Row("bf16", bf16), Row("bf16 + int8 KV cache", bf16, kv_dtype="int8")]
    for name, mode in MODES.items():
        if backend_problem(mode) is not None:
            continue
        scales = calibrate(model, fp32, calibration) if mode.activations == "calibrated" else None
        rows.append(Row(name, quantize(fp32, model.axes, name, scales)))
    rows.append(Row("w8a8 + int8 KV cache", _find(rows, "w8a8").params, kv_dtype="int8"))
    rows.append(Row("int4-g32 + QAT", quantize(runs["qat"].params, model.axes, "int4-g32"), source="qat"))

    prompt_len = 32
    prompt = jnp.asarray(batches[0]["inputs"][: args.batch, :prompt_len])
    new = 16 if args.quick else args.new_tokens
    contenders = [
        Contender(
            r.name, lambda r=r: generate(cfg, model.graphdef, r.params, prompt, new_tokens=new, kv_dtype=r.kv_dtype)
        )
        for r in rows
    ]
    timings = interleave(contenders, rounds=rounds, window_s=window)
    tokens = args.batch * new
    base_loss = eval_loss(model, bf16, batches)
    base_rate = tokens / timings["bf16"].step_s
    fp32_bytes = nbytes(fp32)
    table = []
    for r in rows:
        cache = init_cache(cfg, args.batch, prompt_len + new, kv_dtype=r.kv_dtype)
        loss = eval_loss(model, r.params, batches)
        rate = tokens / timings[r.name].step_s
        held = [cache.k, cache.v] + ([] if cache.k_scale is None else [cache.k_scale, cache.v_scale])
        table.append(
            {
                "mode": r.name,
                "weights": r.source,
                "eval_loss": loss,
                "loss_vs_bf16": loss / base_loss,
                "weight_bytes": nbytes(r.params),
                "bytes_vs_fp32": nbytes(r.params) / fp32_bytes,
                "cache_bytes_per_token": sum(x.nbytes for x in held) // (args.batch * (prompt_len + new)),
                "tokens_per_s": rate,
                "speed_vs_bf16": rate / base_rate,
                "matmuls": matmul_types(model.graphdef, r.params, cache, prompt[:, :1]),
            }
        )
    widths = [int(w) for w in args.widths.split(",") if w] if not args.quick else []
    sweep = width_sweep(widths, args.batch, prompt_len, new, rounds, window)
    result = {
        "date": datetime.date.today().isoformat(),
        "host": host(),
        "load_average": load_average(),
        "model": dataclasses.asdict(cfg),
        "train_seconds": train_s,
        "steps": {"base": None if args.run_dir else steps, "fine_tune": tune},
        "decode": {"batch": args.batch, "prompt": prompt_len, "new_tokens": new},
        "reports": {r.name: dataclasses.asdict(report(fp32, r.params)) for r in rows[2:]},
        "rows": table,
        "widths": sweep,
    }
    write_json(args.out, result)
    print(markdown(result))
    print(f"results in {args.out}")


def _find(rows: list[Row], name: str) -> Row:
    return next(r for r in rows if r.name == name)


def markdown(result: dict[str, Any]) -> str:
    """The table as markdown, with the host line above it."""
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in result["host"]["flags"].items())
    lines = [
        f"{result['date']}, {result['host']['cpu']} ({flags}); load {result['load_average']}",
        "",
        "| mode | eval loss | vs bf16 | weight bytes | vs fp32 | KV bytes/token | tokens/s | vs bf16 | matmuls in the decode step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['mode']} | {row['eval_loss']:.4f} | {row['loss_vs_bf16']:.4f}x | {row['weight_bytes'] / 2**20:.2f} MiB "
            f"| {row['bytes_vs_fp32']:.3f}x | {row['cache_bytes_per_token']} | {row['tokens_per_s']:.0f} "
            f"| {row['speed_vs_bf16']:.2f}x | {row['matmuls']} |"
        )
    if result.get("widths"):
        lines += [
            "",
            "| d_model (random weights) | bf16 tokens/s | w8a8 tokens/s | w8a8 vs bf16 |",
            "|---|---|---|---|",
        ]
        for w in result["widths"]:
            lines.append(
                f"| {w['d_model']} | {w['bf16_tokens_per_s']:.0f} | {w['w8a8_tokens_per_s']:.0f} | {w['w8a8_vs_bf16']:.2f}x |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
