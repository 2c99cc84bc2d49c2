"""`scalelab sweep plan SPEC`, `scalelab sweep run SPEC [--shard i/k] [--sweep-dir DIR]` and `scalelab sweep status`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scalelab.cli.options import add_dry_run_arguments, add_group
from scalelab.parallel.distributed import add_arguments as add_distributed_arguments

DEFAULT_PROBE_STEPS = 20
DEFAULT_PROBE_MAX_FLOPS = 3e11  # per step: a 20-step probe then takes well under a minute on a 2-core CPU
MAX_AUTO_CPU_WORKERS = 8  # each worker holds a JAX runtime and its own compiled programs in memory


def register_sweep(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sweep` subcommand with its `plan` and `run` actions."""
    actions = add_group(
        subparsers,
        "sweep",
        "plan and run scaling sweeps",
        "Plan and run a scaling sweep. SPEC is a YAML path or a name under configs/sweeps/ (e.g. demo).",
        metavar="ACTION",
    )

    plan = actions.add_parser(
        "plan",
        help="print the runs, the total compute and a measured wall-time estimate",
        description="Print the table of runs (N, D, C, steps, batch, lr) and the total compute, then estimate "
        "the wall time on this machine from a short probe of a few of the planned shapes.",
        epilog="example: scalelab sweep plan demo",
    )
    plan.add_argument("spec", metavar="SPEC", help="sweep spec path or name under configs/sweeps/")
    plan.add_argument("--shard", metavar="I/K", help="show only shard I of K (0 <= I < K)")
    plan.add_argument("--no-probe", action="store_true", help="skip the measured wall-time estimate")
    plan.add_argument(
        "--probe-steps",
        type=_probe_steps,
        default=DEFAULT_PROBE_STEPS,
        help="steps per probed shape, 2 or more (default: %(default)s)",
    )
    plan.add_argument(
        "--probe-max-flops",
        type=float,
        default=DEFAULT_PROBE_MAX_FLOPS,
        help="probe only shapes with at most this many FLOPs per step (default: %(default)g)",
    )
    plan.set_defaults(func=run_plan)

    run = actions.add_parser(
        "run",
        help="train every unfinished run of a sweep (or of one shard)",
        description="Train each planned run in SWEEP_DIR/runs/<run>/ and record it in SWEEP_DIR/results.csv. "
        "Finished runs are skipped and interrupted ones resume, so the same command continues a sweep.",
        epilog="example: scalelab sweep run demo --sweep-dir sweeps/demo --shard 0/4",
    )
    run.add_argument("spec", metavar="SPEC", help="sweep spec path or name under configs/sweeps/")
    run.add_argument("--shard", metavar="I/K", help="run only shard I of K (0 <= I < K); shards never overlap")
    run.add_argument("--sweep-dir", type=Path, default=None, help="sweep directory (default: sweeps/<spec name>)")
    run.add_argument("--quiet", action="store_true", help="no per-run summary or progress bar; keep the sweep bar")
    run.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="run the sweep as N shards side by side on this host, each on its own CPU cores (or GPUs), with their "
        "output in SWEEP_DIR/workers/; small models finish sooner this way. auto: one per GPU, or one per CPU core "
        f"up to {MAX_AUTO_CPU_WORKERS} (default: 1, in this process)",
    )
    add_distributed_arguments(run)  # a shard may span hosts: every run then uses all of them
    add_dry_run_arguments(run)
    run.set_defaults(func=run_run)

    status = actions.add_parser(
        "status",
        help="show where each run stands: done, running, stopped or not started, with its steps and loss",
        description="Read SWEEP_DIR and show each planned run's state (done, diverged, running, trained, stopped, "
        "not started), its steps and loss, what comes next for it, and the share of the sweep's FLOPs trained. "
        "It changes nothing, so it is safe while the sweep runs, from any host that sees SWEEP_DIR.",
        epilog="example: scalelab sweep status demo --sweep-dir sweeps/demo",
    )
    status.add_argument("spec", metavar="SPEC", help="sweep spec path or name under configs/sweeps/")
    status.add_argument("--shard", metavar="I/K", help="show only shard I of K (0 <= I < K)")
    status.add_argument("--sweep-dir", type=Path, default=None, help="sweep directory (default: sweeps/<spec name>)")
    status.set_defaults(func=run_status)


def _probe_steps(text: str) -> int:
    """--probe-steps: 2 or more (the first step pays one-off costs; the time per step comes from the rest)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, 2 or more, got {text!r}")
    return value


def _workers(text: str) -> int | str:
    """--workers: a count, or auto."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or auto, got {text!r}") from None


def _plan(args: argparse.Namespace):
    from scalelab.scaling.sweep.plan import make_plan, parse_shard, shard_runs
    from scalelab.scaling.sweep.spec import load_spec

    shard = parse_shard(args.shard) if args.shard else (0, 1)
    plan = make_plan(load_spec(args.spec))
    return plan, shard, shard_runs(plan.runs, *shard)


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan table, then the probe-based wall-time estimate."""
    from scalelab.scaling.sweep.plan_table import format_plan

    plan, shard, runs = _plan(args)
    title = f"sweep {plan.spec.name}: {len(plan.runs)} runs, total compute {plan.total_flops:.3g} FLOPs"
    if shard[1] > 1:
        title += f"; shard {shard[0]}/{shard[1]} has {len(runs)}"
    print(title)
    print(format_plan(plan, runs), flush=True)
    if args.no_probe or not runs:
        return 0
    from scalelab.scaling.sweep.probe import choose_probes, estimate, probe_run

    probes = choose_probes(runs, args.probe_max_flops)
    if not probes:
        cheapest = min(run.flops_per_token * run.batch_size * run.config.train.seq_len for run in runs)
        print(
            f"wall time: not estimated; the cheapest run needs {cheapest:.3g} FLOPs per step, over the probe cap "
            f"{args.probe_max_flops:g} (plan on the target hardware, or raise --probe-max-flops)"
        )
        return 0
    print(f"probing {len(probes)} shape(s) for {args.probe_steps} steps each ...", flush=True)
    points = [probe_run(run, args.probe_steps) for run in probes]
    for point in points:
        print(f"  {point.run}: {point.step_s * 1e3:.1f} ms/step, {point.fixed_s:.1f} s per run to build and compile")
    result = estimate(plan, points, runs)
    minutes = result.total_s / 60
    note = f"; {result.beyond} run(s) extrapolated beyond the dearest probe" if result.beyond else ""
    print(f"estimated wall time on this machine: {minutes:.1f} min ({result.total_s / 3600:.2f} h){note}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Print each run's state from the sweep directory."""
    from scalelab.errors import UserError
    from scalelab.scaling.sweep.runner import check_sweep_dir
    from scalelab.scaling.sweep.status import format_status

    plan, _, runs = _plan(args)
    sweep_dir = args.sweep_dir or Path("sweeps") / plan.spec.name
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UserError(f"--sweep-dir {sweep_dir} is a file, not a directory; give the sweep's directory")
    check_sweep_dir(plan, sweep_dir, runs)  # a directory of another spec is named, not misread
    print(format_status(plan, sweep_dir, runs))
    return 0


def _print_utilization(plan, sweep_dir: Path, runs) -> None:
    """The compute utilization of `runs` (the shard's) against the machine's measured peak, from their records."""
    import jax

    from scalelab.runtime.peak import peak_flops_per_device
    from scalelab.scaling.sweep.utilization import sweep_utilization

    config = plan.runs[0].config
    per_device, _ = peak_flops_per_device(config.logging.peak_flops, config.model.dtype)
    usage = sweep_utilization(plan, sweep_dir, per_device * jax.device_count(), runs)
    if usage is not None:
        print(usage.describe())


def _next_step(spec: str, plan, sweep_dir: Path, rows: int) -> str:
    """What to run next: the fit once every planned run has its row, else where to watch the rest."""
    if rows == len(plan.runs):
        return f"next: scalelab fit {sweep_dir}, then scalelab plot {sweep_dir / 'fit'}"
    return (
        f"{len(plan.runs) - rows} of the sweep's {len(plan.runs)} runs have no row yet (other shards'); "
        f"scalelab sweep status {spec} --sweep-dir {sweep_dir} shows where each stands"
    )


def _recorded(names: list[str]) -> str:
    """The summary's count of runs trained earlier whose rows this call wrote, when there are any."""
    return f"{len(names)} recorded from their last checkpoint, " if names else ""


def _lost_coordinator_line(host: str) -> str:
    from scalelab.parallel.liveness import LostPeer
    from scalelab.train.faults import peer_lost_line

    resume = "finished runs are skipped, and the unfinished one resumes from its newest checkpoint if it saved one"
    return peer_lost_line(LostPeer(0, host, 0.0), resume, "sweep")


def run_run(args: argparse.Namespace) -> int:
    """Run the sweep (or one shard) and report what happened."""
    from scalelab.errors import UserError
    from scalelab.parallel.distributed import initialize, initialize_kwargs, startup_failure
    from scalelab.parallel.supervisor import supervise, supervised

    if args.workers != 1:
        status = _run_workers(args)
        if status is not None:
            return status
    if args.dry_run:  # what the shard's launch decides, before jax.distributed starts
        from scalelab.cli.dry_run import dry_run_sweep

        plan, shard, runs = _plan(args)
        return dry_run_sweep(args, plan, shard, runs, args.sweep_dir or Path("sweeps") / plan.spec.name)
    distributed = initialize_kwargs(args)
    if distributed is not None and not supervised():  # only another process can report process 0's loss
        from scalelab.train.faults import EXIT_PEER_LOST

        def describe_startup(reason: str) -> str:
            return f"scalelab sweep: error: {startup_failure(distributed, reason)}"

        return supervise(_lost_coordinator_line, EXIT_PEER_LOST, describe_startup=describe_startup)
    from scalelab.scaling.sweep.results import RESULTS_CSV, IncompleteRunError
    from scalelab.scaling.sweep.runner import run_sweep

    initialize(distributed)  # join the shard's other hosts before anything touches a device
    plan, shard, runs = _plan(args)
    sweep_dir = args.sweep_dir or Path("sweeps") / plan.spec.name
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UserError(f"--sweep-dir {sweep_dir} is a file, not a directory; give a directory for the sweep")
    import jax

    try:
        report = run_sweep(plan, sweep_dir, shard, quiet=args.quiet)
    except IncompleteRunError as error:
        print(f"scalelab sweep: stopped: {error}; run the same command again to resume", file=sys.stderr)
        return 1
    if jax.process_index() == 0:  # another process would repeat it, with no rows: only process 0 writes them
        print(
            f"sweep {plan.spec.name}: {len(report.ran)} run(s) trained, {_recorded(report.recorded)}"
            f"{report.skipped} already done, "
            f"{len(report.diverged)} diverged, {len(report.failed)} failed; "
            f"{report.rows} row(s) in {sweep_dir / RESULTS_CSV}"
        )
        _print_utilization(plan, sweep_dir, runs)
        if not report.failed:
            print(_next_step(args.spec, plan, sweep_dir, report.rows))
    if report.failed:
        print(
            f"scalelab sweep: error: {len(report.failed)} run(s) failed ({', '.join(report.failed)}); see the "
            "tracebacks above, fix the cause and run the same command again to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_workers(args: argparse.Namespace) -> int | None:
    """`sweep run --workers N`: the sweep's shards side by side on this host, reported as one sweep.

    None when `--workers auto` picks one worker: the sweep then runs in this process as usual.
    """
    import os

    from scalelab.errors import UserError
    from scalelab.parallel.distributed import initialize_kwargs
    from scalelab.scaling.sweep.results import RESULTS_CSV
    from scalelab.scaling.sweep.runner import check_sweep_dir
    from scalelab.scaling.sweep.workers import auto_workers, log_tail, probe_host, run_workers, split_host
    from scalelab.train.faults import EXIT_PREEMPTED

    if args.shard or args.dry_run or initialize_kwargs(args) is not None:
        given = "--shard" if args.shard else "--dry-run" if args.dry_run else "a multi-process launch"
        raise UserError(
            f"--workers splits one host into shards itself, so it cannot be combined with {given}; drop --workers "
            "(or run one `sweep run --shard i/k` per host)"
        )
    if args.workers != "auto" and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    plan, _, _ = _plan(args)
    sweep_dir = args.sweep_dir or Path("sweeps") / plan.spec.name
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UserError(f"--sweep-dir {sweep_dir} is a file, not a directory; give a directory for the sweep")
    check_sweep_dir(plan, sweep_dir, plan.runs)  # once here, rather than in every worker's log
    config = plan.runs[0].config
    host = probe_host(config.logging.peak_flops, config.model.dtype)
    if args.workers == "auto":
        args.workers = auto_workers(host, len(plan.runs), MAX_AUTO_CPU_WORKERS)
        if args.workers == 1:
            print(f"sweep {plan.spec.name}: --workers auto: one worker on this {host.platform} host", flush=True)
            return None
    shares = split_host(host, args.workers, os.environ.get("CUDA_VISIBLE_DEVICES"))
    parts = ", ".join(
        f"{i}: cores {','.join(map(str, share.cores))}" + "".join(f" {k}={v}" for k, v in share.env.items())
        for i, share in enumerate(shares)
    )
    print(
        f"sweep {plan.spec.name}: {len(plan.runs)} runs as {args.workers} shards side by side ({parts}); "
        f"their output goes to {sweep_dir / 'workers'}/",
        flush=True,
    )
    report = run_workers(plan, args.spec, sweep_dir, host, shares)
    print(
        f"sweep {plan.spec.name}: {len(report.trained)} run(s) trained, {_recorded(report.recorded)}"
        f"{report.skipped} already done, "
        f"{len(report.diverged)} diverged, {len(report.unfinished)} unfinished; "
        f"{report.rows} row(s) in {sweep_dir / RESULTS_CSV}"
    )
    if report.usage is not None:
        print(report.usage.describe())
    if all(status == 0 for status in report.statuses):
        print(_next_step(args.spec, plan, sweep_dir, report.rows))
    broken = [i for i, status in enumerate(report.statuses) if status not in (0, EXIT_PREEMPTED)]
    for i in broken:
        print(
            f"scalelab sweep: error: worker {i} (shard {i}/{args.workers}) exited with status "
            f"{report.statuses[i]}; the end of {report.logs[i]}:\n{log_tail(report.logs[i])}",
            file=sys.stderr,
        )
    if broken:
        print("scalelab sweep: fix the cause and run the same command again to go on", file=sys.stderr)
        return 2 if all(report.statuses[i] == 2 for i in broken) else 1
    if EXIT_PREEMPTED in report.statuses:
        print("scalelab sweep: stopped; finished runs are kept, and the same command resumes the rest", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0
