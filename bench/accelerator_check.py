"""The accelerator check: what only a GPU or TPU can show, as one command that finishes within 8 minutes.

Run: python -m scalelab.bench.accelerator_check [--quick] [--parts mfu,attention,decode,agreement]
(on a lent GPU: bash bench/accelerator_check.sh). Four parts, each timed:

  mfu        the gpt-1b rung's real train step: tokens/s, step time and MFU against the datasheet
             peak (runtime/peak.py); target >= 50%, stretch >= 55%
  attention  the 1B's width (6 of its layers, so XLA's 8k fits) at 2k and 8k tokens, fused
             (model.attention_impl=cudnn on a GPU, splash on a TPU) against =xla: step time,
             memory per device and their ratios; a variant that would not fit is reported, not run
  decode     KV-cache greedy decoding of the 1B model, in tokens/s (bench/decode_bench.py's timing)
  agreement  a small model trained in bf16 on the default device and in fp32 on the CPU with the
             same data and seed: the largest relative difference of the two loss curves

Writes bench/results/accelerator.json (--quick: bench/results/quick/accelerator.json). --quick runs
every part at toy sizes, which is all a CPU can do: there attention compares einsum with xla, and
the mfu part is skipped with its reason (the 1B rung does not step in minutes on a CPU).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import jax

from scalelab.bench.accelerator_parts import CHECKS, MFU_TARGET, make_plan
from scalelab.bench.report import RESULTS_DIR, host, write_json
from scalelab.errors import UserError

PARTS = tuple(CHECKS)  # mfu, attention, decode, agreement: the order they run in
BUDGET_S = 8 * 60  # the limit for the whole check on one GPU, compiles included


def _parts(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {', '.join(unknown) or value!r}; choose from {','.join(PARTS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scalelab.bench.accelerator_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="every part at toy sizes (what a CPU can run in a minute)")
    parser.add_argument("--parts", type=_parts, default=PARTS, help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: bench/results[/quick]/accelerator.json)"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen parts in order, print and time each, write and return the results."""
    device = jax.devices()[0]
    if device.platform == "cpu" and not args.quick:
        raise UserError(
            "the full accelerator check needs a GPU or TPU, and this JAX sees only a CPU; add --quick for toy sizes"
        )
    plan = make_plan(args.quick, device.platform)
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[accelerator {time.perf_counter() - began:6.1f}s] {message}", flush=True)

    log(f"{device.device_kind} ({device.platform}), jax {jax.__version__}; parts {','.join(args.parts)}")
    parts: dict[str, Any] = {}
    elapsed: dict[str, float] = {}
    out = args.out or RESULTS_DIR / ("quick" if args.quick else "") / "accelerator.json"
    result = {
        "command": " ".join(["python -m scalelab.bench.accelerator_check", *_argv(args)]),
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "quick": args.quick,
        "host": host(),
        "budget_s": BUDGET_S,
        "elapsed_s": elapsed,
        "parts": parts,
    }
    for name in args.parts:
        start = time.perf_counter()
        try:
            parts[name] = CHECKS[name](plan, device, log)
        except Exception as error:  # a lent accelerator's minutes are few: one broken part must not lose the rest
            traceback.print_exc()
            parts[name] = {"error": f"{type(error).__name__}: {error}"}
            log(f"{name}: FAILED ({type(error).__name__}); the traceback is above")
        elapsed[name] = time.perf_counter() - start
        log(f"{name}: {elapsed[name]:.1f} s")
        write_json(out, result)  # after every part, so a run stopped at its time limit keeps what it measured
    elapsed["total"] = time.perf_counter() - began
    result["within_budget"] = elapsed["total"] <= BUDGET_S
    log(
        f"total {elapsed['total']:.1f} s, {'within' if result['within_budget'] else 'OVER'} the {BUDGET_S // 60}-minute budget"
    )
    result["verdicts"] = summary(parts)
    for line in result["verdicts"]:
        log(f"verdict: {line}")
    write_json(out, result)
    log(f"results in {out}")
    return result


def summary(parts: dict[str, Any]) -> list[str]:
    """One line per part: its headline number against its target, or why it has none."""
    lines = []
    for name, part in parts.items():
        if "error" in part or "skipped" in part:
            lines.append(f"{name}: {part.get('error') or part['skipped']}")
        elif name == "mfu":
            lines.append(f"mfu: {100 * part['mfu']:.1f}% (target {100 * MFU_TARGET:.0f}%): {part['verdict']}")
        elif name == "attention":
            ratios = [f"{r['seq_len']}: {r['speedup']:.2f}" for r in part["rows"] if "speedup" in r]
            impls = (part["fused"], part["baseline"])
            failed = [f"{r['seq_len']} {i}" for r in part["rows"] for i in impls if "error" in r.get(i, {})]
            line = f"attention: {part['baseline']} ÷ {part['fused']} step time " + (", ".join(ratios) or "-")
            lines.append(line + (f"; FAILED: {', '.join(failed)}" if failed else ""))
        elif name == "decode":
            lines.append(f"decode: {part['tokens_per_s']:,.0f} tokens/s")
        else:
            verdict = "pass" if part["passed"] else "FAIL"
            lines.append(
                f"agreement: {100 * part['max_relative_difference']:.3f}% (≤ {100 * part['tolerance']:.0f}%): {verdict}"
            )
    return lines


def _argv(args: argparse.Namespace) -> list[str]:
    return (["--quick"] if args.quick else []) + (["--parts", ",".join(args.parts)] if args.parts != PARTS else [])


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when every part ran (its verdicts are printed), 1 when one broke, 2 on a user error."""
    args = parse_args(argv)
    try:
        result = run(args)
    except UserError as error:
        print(f"accelerator_check: error: {error}", file=sys.stderr)
        return 2
    return 1 if any(broke(part) for part in result["parts"].values()) else 0


def broke(part: dict[str, Any]) -> bool:
    """True when the part, or one measurement inside it (an attention row's implementation), failed."""
    if "error" in part:
        return True
    return any(isinstance(row.get(impl), dict) and "error" in row[impl] for row in part.get("rows", ()) for impl in row)


if __name__ == "__main__":
    raise SystemExit(main())
