"""The whole benchmark: run the chosen sections, print their tables and write bench/results/*.json."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax

from scalelab.bench import report, sections
from scalelab.bench.measure import load_average
from scalelab.bench.report import fixed, integer, percent, text
from scalelab.bench.shapes import by_name
from scalelab.units import si

SECTIONS = ("peak", "ladder", "remat", "depth", "others")
BENCH_DIR = Path(__file__).resolve().parent
BENCH_PACKAGE = __package__  # scalelab.bench: each benchmark runs as `python -m <package>.<name>`

LADDER_COLUMNS = [
    ("rung", "rung", text),
    ("params", "params", si),
    ("impl", "impl", text),
    ("tokens_per_s", "tokens/s", integer),
    ("step_s", "step s", fixed(3)),
    ("mfu", "MFU", percent),
    ("mfu_bf16_peak", "MFU bf16pk", percent),
    ("mfu_vendor", "MFU vendor", percent),
    ("mfu_ceiling", "MFU ceiling", percent),
    ("compile_s", "compile s", fixed(1)),
    ("memory_bytes", "mem/device", lambda v: si(v, "B")),
    ("vs_torch_best", "÷ torch best", fixed(2)),
]
REMAT_COLUMNS = [
    ("rung", "rung", text),
    ("policy", "remat", text),
    ("tokens_per_s", "tokens/s", integer),
    ("mfu", "MFU", percent),
    ("memory_bytes", "mem/device", lambda v: si(v, "B")),
    ("temp_bytes", "temporaries", lambda v: si(v, "B")),
    ("speed_vs_none", "speed ÷ none", fixed(2)),
    ("memory_vs_none", "memory ÷ none", fixed(2)),
]
DEPTH_COLUMNS = [
    ("n_layers", "layers", integer),
    ("compile_s", "compile s (scan)", fixed(1)),
    ("compile_vs_first", "÷ first", fixed(2)),
    ("unrolled_compile_s", "compile s (unrolled)", fixed(1)),
    ("step_s", "step s", fixed(3)),
    ("tokens_per_s", "tokens/s", integer),
]


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run and how long to time it."""

    sections: tuple[str, ...]
    rungs: tuple[str, ...]
    variants: tuple[str, ...]
    remat_rungs: tuple[str, ...]
    depths: tuple[int, ...]
    unrolled_max: int
    rounds: int
    window_s: float
    devices: int
    quick: bool
    results_dir: Path
    command: str


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {load_average() or 0:.1f}] {message}", file=sys.stderr, flush=True)


def quick_args(path: Path) -> list[str] | None:
    """A bench module's `QUICK_ARGS = [...]` (its short mode), read without importing it; None if absent."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "QUICK_ARGS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def run_others(quick: bool, env: dict[str, str], results_dir: Path, timeout_s: float = 1800) -> list[dict[str, Any]]:
    """Run every bench/*_bench.py as `python -m scalelab.bench.<name>` in its own process (its own XLA flags).

    With `quick`, a module runs with its QUICK_ARGS, and one without a short mode is skipped: the
    quick suite's time must not depend on a full benchmark (or a dataset to prepare) hidden in it.
    """
    rows = []
    for path in sorted(BENCH_DIR.glob("*_bench.py")):
        args = quick_args(path) if quick else []
        if args is None:
            note = f"skipped: no quick mode; run `python -m {BENCH_PACKAGE}.{path.stem}` or the suite without --quick"
            rows.append({"module": path.stem, "args": "", "status": "skipped", "seconds": 0.0, "output_tail": [note]})
            print(f"\n{path.stem}: {note}")
            continue
        out = results_dir / f"{path.stem.removesuffix('_bench')}.json"
        command = [sys.executable, "-m", f"{BENCH_PACKAGE}.{path.stem}", *args, "--out", str(out)]
        _say(f"others: {' '.join(command[1:])}")
        start = time.perf_counter()
        try:
            done = subprocess.run(
                command, cwd=BENCH_DIR.parent, env=env, capture_output=True, text=True, timeout=timeout_s
            )
            status, tail = done.returncode, (done.stdout + done.stderr).strip().splitlines()[-15:]
        except subprocess.TimeoutExpired:
            status, tail = "timeout", []
        rows.append(
            {
                "module": path.stem,
                "args": " ".join(args),
                "status": status,
                "seconds": time.perf_counter() - start,
                "output_tail": tail,
            }
        )
        print(f"\n{path.stem} (exit {status}):\n" + "\n".join(f"  {line}" for line in tail))
    return rows


def _section(name: str, opts: Options, payload: dict[str, Any], tables: list[str]) -> None:
    path = report.write(name, {"command": opts.command, **payload}, opts.results_dir)
    print(f"\n== {name} ({path.relative_to(BENCH_DIR.parent) if path.is_relative_to(BENCH_DIR.parent) else path})")
    for t in tables:
        print(t)


def targets(ladder_rows: list[dict[str, Any]], depth_rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with the measured value."""
    lines = []
    for row in ladder_rows:
        if row["impl"] != "ours-bf16" or row.get("vs_torch_best") is None:
            continue
        if row["d_model"] >= 512:
            lines.append(
                f"{row['rung']}: ours ÷ torch best {row['vs_torch_best']:.2f} (target ≥ 1.0); "
                f"MFU vs measured bf16 peak {100 * row['mfu_bf16_peak']:.1f}% (target ≥ 75%; its matmuls alone, "
                f"each at its isolated rate, would reach {100 * row['mfu_ceiling']:.1f}%)"
            )
        elif row["d_model"] <= 256:
            lines.append(f"{row['rung']}: ours ÷ torch best {row['vs_torch_best']:.2f} (target ≥ 1.3)")
    by_layers = {row["n_layers"]: row for row in depth_rows}
    if 4 in by_layers and 48 in by_layers:
        ratio = by_layers[48]["compile_s"] / by_layers[4]["compile_s"]
        lines.append(f"compile at 48 layers ÷ at 4: {ratio:.2f} (target ≤ 1.5)")
    return lines


def run(opts: Options, env: dict[str, str]) -> int:
    """Run the chosen sections in order; print every table and the targets; write the JSON files."""
    devices = jax.devices()[: opts.devices]
    load = {"start": load_average()}
    common = {"host": report.host(), "devices": len(devices), "quick": opts.quick, "load": load}
    _say(f"{len(devices)} x {devices[0].device_kind}; sections {', '.join(opts.sections)}")
    peaks = sections.measure_peaks(devices[0], rounds=10)
    ladder_rows: list[dict[str, Any]] = []
    depth_rows: list[dict[str, Any]] = []
    if "peak" in opts.sections:
        row = {"fp32": peaks.fp32, "bf16": peaks.bf16, "vendor_bf16": peaks.vendor}
        table = "  ".join(f"{k} {si(v, 'FLOP/s') if v else '-'}" for k, v in row.items())
        _section("peak", opts, {**common, "peak_flops_per_device": row}, [table])
    if "ladder" in opts.sections:
        ladder_rows, notes = sections.ladder(
            by_name(opts.rungs), list(opts.variants), devices, peaks, opts.rounds, opts.window_s, _say
        )
        load["after_ladder"] = load_average()
        _section(
            "ladder",
            opts,
            {**common, "peaks": dataclasses.asdict(peaks), "rows": ladder_rows, "notes": notes},
            [report.table(ladder_rows, LADDER_COLUMNS), *notes],
        )
    if "remat" in opts.sections:
        rows = sections.remat(by_name(opts.remat_rungs), devices, peaks, opts.rounds, opts.window_s, _say)
        load["after_remat"] = load_average()
        _section("remat", opts, {**common, "rows": rows}, [report.table(rows, REMAT_COLUMNS)])
    if "depth" in opts.sections:
        depth_rows = sections.depth(list(opts.depths), opts.unrolled_max, devices, opts.rounds, opts.window_s, _say)
        load["after_depth"] = load_average()
        _section("depth", opts, {**common, "rows": depth_rows}, [report.table(depth_rows, DEPTH_COLUMNS)])
    if "others" in opts.sections:
        rows = run_others(opts.quick, env, opts.results_dir)
        _section("others", opts, {**common, "rows": rows}, [])
    print("\n== targets (load average " + ", ".join(f"{k} {v:.1f}" for k, v in load.items() if v is not None) + ")")
    for line in targets(ladder_rows, depth_rows) or ["(no ladder or depth rows to judge)"]:
        print(line)
    return 0
