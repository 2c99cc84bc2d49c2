"""`scalelab bench`: the benchmark suite and its options."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import shlex
import sys
from pathlib import Path

from scalelab.bench.report import RESULTS_DIR
from scalelab.bench.shapes import DEPTHS, LADDER, QUICK_DEPTHS, QUICK_LADDER

QUICK_RESULTS_DIR = RESULTS_DIR / "quick"
VARIANTS = (
    "ours-bf16",
    "ours-fp32",
    "torch-fp32-eager",
    "torch-fp32-compile",
    "torch-bf16-eager",
    "torch-bf16-compile",
)
DEFAULT_REMAT_RUNGS = ("ref-512",)
QUICK_REMAT_RUNGS = ("tiny",)
EPILOG = """examples:
  scalelab bench                                  everything (about an hour on a 2-core CPU)
  scalelab bench --quick                          a smoke run of every section (about 3 minutes on 2 cores)
  scalelab bench --sections ladder --rungs ref-128,ref-512
  scalelab bench --sections depth --depths 4,48

Results go to bench/results/<section>.json (--quick: bench/results/quick/, so a smoke run
never replaces a full run's numbers); the targets are printed last."""


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _names(value))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    rungs = ", ".join(s.name for s in LADDER)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of every section, about 3 minutes on an idle 2-core CPU: rungs "
        f"{','.join(QUICK_LADDER)}, remat on {','.join(QUICK_REMAT_RUNGS)}, depths {','.join(map(str, QUICK_DEPTHS))}, "
        "3 rounds, and the other benchmarks' short modes (those without one are skipped)",
    )
    parser.add_argument(
        "--sections",
        type=_names,
        default=None,
        help="comma-separated subset of peak,ladder,remat,depth,others (default: all)",
    )
    parser.add_argument("--rungs", type=_names, default=None, help=f"ladder rungs (from: {rungs})")
    parser.add_argument(
        "--variants", type=_names, default=VARIANTS, help=f"ladder variants (default: {','.join(VARIANTS)})"
    )
    parser.add_argument(
        "--remat-rungs",
        type=_names,
        default=None,
        help=f"rungs for the remat comparison (default: {','.join(DEFAULT_REMAT_RUNGS)}, quick: "
        f"{','.join(QUICK_REMAT_RUNGS)})",
    )
    parser.add_argument(
        "--depths", type=_ints, default=None, help=f"layer counts (default: {','.join(map(str, DEPTHS))})"
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default: 7, quick: 3)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per timing window (default: 1)")
    parser.add_argument("--devices", type=int, default=1, help="devices our trainer uses (default: 1)")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where the JSON goes (default: bench/results, or bench/results/quick with --quick)",
    )


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="throughput, MFU, memory and compile time against the machine's peak and a PyTorch baseline",
        description="Benchmark scalelab: matmul peak, a ladder of model sizes against a plain PyTorch GPT, "
        "remat policies and depth. Needs the bench extra for the baseline: pip install -e '.[bench]'.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run_bench, prog="scalelab")
    # `scalelab bench quant`: the quantization table (bench/quant_bench.py); plain `scalelab bench` runs the suite.
    commands = parser.add_subparsers(dest="bench_command", metavar="{quant,rollout}")
    quant = commands.add_parser(
        "quant",
        help="eval loss, bytes and decode tokens/s of every quantization mode against bf16",
        description="Train a small gpt on the embedded corpus (or start from --run-dir), fine-tune it plainly and with "
        "int4 quantization-aware training, then measure every quantization mode against bf16 (docs/quantization.md).",
    )
    from scalelab.bench.quant_options import add_arguments as quant_arguments

    quant_arguments(quant)
    quant.set_defaults(func=run_quant)
    rollout = commands.add_parser(
        "rollout",
        help="PPO rollout tokens/s next to plain KV-cache decode tokens/s of the same model",
        description="Time plain sampled decoding, PPO's rollout (tokens, log-probs, masks) and rollout plus PPO's "
        "experience pass on one model and batch (bench/rollout_bench.py; results in bench/results/rollout.json).",
    )
    rollout.add_argument("--quick", action="store_true", help="fewer tokens and rounds")
    rollout.add_argument("--batch", type=int, default=32, help="rows sampled together (default 32)")
    rollout.set_defaults(func=run_rollout)


def run_rollout(args: argparse.Namespace) -> int:
    """Run the rollout benchmark."""
    from scalelab.bench.rollout_bench import main

    main([*(["--quick"] if args.quick else []), "--batch", str(args.batch)])
    return 0


def run_quant(args: argparse.Namespace) -> int:
    """Run the quantization benchmark."""
    from scalelab.bench.quant_bench import run

    run(args)
    return 0


def _check(args: argparse.Namespace) -> None:
    """Reject unknown names with the valid choices, before anything slow starts."""
    from scalelab.bench.suite import SECTIONS

    known = [s.name for s in LADDER]  # in ladder order, as --help lists them
    for flag, values, valid in (
        ("--sections", args.sections or (), SECTIONS),
        ("--rungs", args.rungs or (), known),
        ("--remat-rungs", args.remat_rungs or (), known),
        ("--variants", args.variants, VARIANTS),
    ):
        unknown = [v for v in values if v not in valid]
        if values == () and getattr(args, flag.removeprefix("--").replace("-", "_")) is not None:
            # `--sections ,` names nothing: running every default instead would hide the slip for an hour
            raise ValueError(f"{flag}: no names given; choose from {', '.join(valid)}")
        if unknown:
            raise ValueError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
    if args.depths == ():
        raise ValueError("--depths: no layer counts given, e.g. --depths 4,48")
    for flag, value in (
        ("--rounds", args.rounds),
        ("--devices", args.devices),
        *(("--depths", d) for d in args.depths or ()),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if not (math.isfinite(args.window) and args.window > 0):
        raise ValueError(f"--window must be a positive number of seconds, got {args.window}")


def _check_devices(wanted: int) -> None:
    """--devices must not ask for more devices than JAX sees (the suite would silently time fewer)."""
    import jax

    devices = jax.devices()
    if wanted > len(devices):
        hint = ""
        if devices[0].platform == "cpu":
            hint = f"; on a CPU, simulate them with XLA_FLAGS=--xla_force_host_platform_device_count={wanted}"
        raise ValueError(
            f"--devices {wanted}, but JAX sees {len(devices)} {devices[0].platform} device(s); "
            f"pass --devices {len(devices)} or fewer{hint}"
        )


def torch_notice(args: argparse.Namespace) -> str | None:
    """What the run will leave out for want of torch, said before anything slow starts; None if nothing."""
    wants_torch = any(v.startswith("torch-") for v in args.variants)
    if "ladder" not in (args.sections or ("ladder",)) or not wants_torch:
        return None
    if importlib.util.find_spec("torch") is not None:
        return None
    return (
        "torch is not installed, so the ladder runs without its PyTorch baseline (no torch rows or ÷ torch ratios); "
        "`make bench` installs the bench extra"
    )


def _prepare_process(devices: int) -> dict[str, str]:
    """Settings that must precede JAX's backend; returns the untouched environment for sub-benchmarks."""
    from scalelab.runtime.host import keep_freed_memory, usable_cores

    env = dict(os.environ)
    keep_freed_memory()
    if devices == 1:
        # Simulated CPU devices (the Makefile exports 8 for tests) only split the same cores.
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
        os.environ["XLA_FLAGS"] = flags.strip()
    # On a GPU, JAX would otherwise reserve 75% of memory up front and starve the PyTorch baseline.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # PyTorch's OpenMP threads spin at every barrier; on a host with more runnable threads than
    # cores they then burn the time slices their partner needs (3x slower steps measured here).
    # Sleeping waits are what a shared host needs; an idle host keeps OpenMP's default.
    if os.getloadavg()[0] > usable_cores():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_bench(args: argparse.Namespace) -> int:
    """Run the suite with `args`."""
    try:
        _check(args)
    except ValueError as error:
        print(f"scalelab bench: error: {error}", file=sys.stderr)
        return 2
    env = _prepare_process(args.devices)
    try:
        _check_devices(args.devices)
    except ValueError as error:
        print(f"scalelab bench: error: {error}", file=sys.stderr)
        return 2
    notice = torch_notice(args)
    if notice:
        print(f"scalelab bench: {notice}", file=sys.stderr, flush=True)
    from scalelab.bench.suite import SECTIONS, Options, run

    command = f"{args.prog} {shlex.join(sys.argv[1:])}"
    opts = Options(
        sections=args.sections or SECTIONS,
        rungs=args.rungs or (QUICK_LADDER if args.quick else tuple(s.name for s in LADDER)),
        variants=args.variants,
        remat_rungs=args.remat_rungs or (QUICK_REMAT_RUNGS if args.quick else DEFAULT_REMAT_RUNGS),
        depths=args.depths or (QUICK_DEPTHS if args.quick else DEPTHS),
        unrolled_max=0 if args.quick else 16,
        rounds=args.rounds or (3 if args.quick else 7),
        window_s=args.window,
        devices=args.devices,
        quick=args.quick,
        results_dir=args.results_dir or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR),
        command=command.strip(),
    )
    return run(opts, env)
