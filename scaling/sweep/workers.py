"""`sweep run --workers N`: the shards of a sweep side by side on one host, each on its own cores or GPUs.

A model of 10^4-10^5 parameters cannot keep even two CPU cores busy: its step is a few hundred
small kernels, and XLA's hand-offs between threads cost about as much as the kernels. Two shards
pinned to one core each finished the first two budgets of the demo in 60 s where one process on
both cores took 103 s, with bit-identical results (docs/sweeps.md). So the parent splits the
host: on a CPU, disjoint sets of cores (the affinity mask, which XLA sizes its thread pool by);
on GPUs, disjoint CUDA_VISIBLE_DEVICES. Each worker is an ordinary `sweep run --shard i/N` whose
output goes to a log in the sweep directory; the parent shows one progress bar, forwards signals,
and reports the sweep from its records, as a single `sweep run` does.

The parent never starts a JAX backend itself (a TPU or GPU it held would be taken from the workers):
a short-lived probe process reports the platform, the devices and the host's peak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scalelab.errors import UserError
from scalelab.parallel.supervisor import die_with_parent
from scalelab.runtime.progress import progress_bar
from scalelab.scaling.sweep.plan import Plan, PlannedRun, shard_runs
from scalelab.scaling.sweep.results import read_result, rebuild_csv, trained_unrecorded
from scalelab.scaling.sweep.utilization import Utilization, side_by_side, sweep_utilization

LOG_DIR = "workers"  # <sweep_dir>/workers/shard-<i>-of-<n>.log
POLL_S = 1.0
TAIL_LINES = 15  # of a failed worker's log, shown by the parent
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PROBE = """
import json, sys
import jax
from scalelab.runtime.host import usable_cores
from scalelab.runtime.peak import peak_flops_per_device
configured, dtype = json.loads(sys.argv[1])
per_device, _ = peak_flops_per_device(configured, dtype)
devices = jax.local_devices()
print(json.dumps({"platform": devices[0].platform, "devices": len(devices), "peak": per_device * len(devices)}))
"""


@dataclasses.dataclass(frozen=True)
class Host:
    """What the workers split: the platform, its local devices, the usable CPU cores, and the host's peak FLOP/s."""

    platform: str
    devices: int
    cores: tuple[int, ...]
    peak: float


@dataclasses.dataclass(frozen=True)
class Share:
    """One worker's part of the host: CPU cores to run on, extra environment, and its fraction of the machine."""

    cores: tuple[int, ...]
    env: dict[str, str]
    fraction: float


def probe_host(configured_peak: float | None, dtype: str) -> Host:
    """The host as a JAX process sees it, from a probe process that exits before the workers start."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # the probe must not reserve GPU memory
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([configured_peak, dtype])],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise UserError(f"--workers: could not start JAX to see this host's devices:\n{done.stderr.strip()}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # Where the OS has no affinity masks (macOS), the workers share every core, unpinned.
    cores = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return Host(found["platform"], found["devices"], tuple(cores), found["peak"])


def auto_workers(host: Host, runs: int, max_cpu: int) -> int:
    """`--workers auto`: one per GPU; on a CPU one per core, at most `max_cpu`; never more than there are runs."""
    if host.platform == "gpu":
        count = host.devices
    elif host.platform == "cpu":
        count = min(len(host.cores), max_cpu)
    else:  # a TPU host's chips are not split between processes here
        count = 1
    return max(1, min(count, runs))


def split_host(host: Host, workers: int, visible: str | None) -> list[Share]:
    """Each worker's share of `host`: disjoint CPU cores, and on GPUs disjoint devices.

    `visible` is CUDA_VISIBLE_DEVICES as this process got it (the workers' devices are picked from it).
    """
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if host.platform == "cpu":
        if workers > len(host.cores):
            raise UserError(
                f"--workers {workers}: this process may use {len(host.cores)} CPU core(s), and each worker needs "
                f"one of its own; give --workers {len(host.cores)} or fewer"
            )
        return [
            Share(host.cores[i::workers], {}, len(host.cores[i::workers]) / len(host.cores)) for i in range(workers)
        ]
    if host.platform == "gpu":
        if workers > host.devices:
            raise UserError(
                f"--workers {workers}: this host has {host.devices} GPU(s), and each worker needs one of its own; "
                f"give --workers {host.devices} or fewer"
            )
        ids = visible.split(",") if visible else [str(i) for i in range(host.devices)]
        pinned = len(host.cores) >= workers  # keep the workers' host threads apart too, when there are cores enough
        return [
            Share(
                host.cores[i::workers] if pinned else host.cores,
                {"CUDA_VISIBLE_DEVICES": ",".join(ids[i::workers])},
                len(ids[i::workers]) / len(ids),
            )
            for i in range(workers)
        ]
    raise UserError(
        f"--workers splits a CPU host's cores or a GPU host's GPUs, not {host.platform} devices; run one "
        "`sweep run --shard i/k` per slice instead (docs/sweeps.md)"
    )


@dataclasses.dataclass
class WorkerReport:
    """What the workers did, from the sweep's records and their exit statuses."""

    trained: list[str]
    recorded: list[str]  # trained before this call, only their rows written now
    diverged: list[str]
    skipped: int
    unfinished: list[str]
    statuses: list[int]
    logs: list[Path]
    rows: int
    usage: Utilization | None


def _worker_command(spec: str, sweep_dir: Path, index: int, workers: int) -> list[str]:
    shard = ["--shard", f"{index}/{workers}", "--quiet"]
    return [sys.executable, "-m", "scalelab", "sweep", "run", spec, "--sweep-dir", str(sweep_dir), *shard]


def _start(command: list[str], share: Share, log: Path) -> subprocess.Popen:
    def pin_and_die_with_parent() -> None:
        if share.cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, share.cores)
        die_with_parent()

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        env = "".join(f" {key}={value}" for key, value in share.env.items())
        out.write(f"--- {stamp}: {' '.join(command[1:])} on cores {list(share.cores)}{env}\n".encode())
        out.flush()
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **share.env},
            start_new_session=True,  # a terminal's Ctrl-C reaches a worker once, through the parent
            preexec_fn=pin_and_die_with_parent,
        )


def _finished(sweep_dir: Path, runs: Sequence[PlannedRun]) -> dict[str, str]:
    """{run: status} of the runs that have a result."""
    found = {}
    for run in runs:
        row = read_result(sweep_dir / "runs" / run.name)
        if row is not None:
            found[run.name] = row["status"]
    return found


def run_workers(plan: Plan, spec: str, sweep_dir: Path, host: Host, shares: list[Share]) -> WorkerReport:
    """Run the sweep as len(shares) shard processes side by side and wait for them; signals are passed on."""
    workers = len(shares)
    sweep_dir = Path(sweep_dir)
    before = _finished(sweep_dir, plan.runs)
    unrecorded = {
        r.name for r in plan.runs if r.name not in before and trained_unrecorded(sweep_dir / "runs" / r.name, r.steps)
    }
    costs = plan.costs(plan.runs)
    logs = [sweep_dir / LOG_DIR / f"shard-{i}-of-{workers}.log" for i in range(workers)]
    procs = [
        _start(_worker_command(spec, sweep_dir, i, workers), share, log)
        for i, (share, log) in enumerate(zip(shares, logs, strict=True))
    ]
    signals = []

    def forward(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        first = not signals
        signals.append(name)
        message = "each worker saves and stops; send it again to stop them at once" if first else "stopping now"
        os.write(2, f"\nscalelab sweep: {name}: {message}\n".encode())
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    bar = progress_bar(
        total=sum(costs.values()),
        initial=sum(costs[name] for name in before),
        unit="FLOP",
        unit_scale=True,
        desc=f"sweep {plan.spec.name} ({workers} workers)",
        bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} FLOP [{elapsed}<{remaining}{postfix}]",
    )
    seen = dict(before)
    try:
        while any(proc.poll() is None for proc in procs):
            time.sleep(POLL_S)
            now = _finished(sweep_dir, plan.runs)
            for name in now.keys() - seen.keys():
                bar.update(costs[name])
            seen = now
            bar.set_postfix_str(f"{len(seen)}/{len(plan.runs)} runs done", refresh=False)
        seen = _finished(sweep_dir, plan.runs)
        bar.n = sum(costs[name] for name in seen)
        bar.set_postfix_str(f"{len(seen)}/{len(plan.runs)} runs done")
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    new = [run.name for run in plan.runs if run.name in seen and run.name not in before]
    parts = [
        (sweep_utilization(plan, sweep_dir, host.peak, shard_runs(plan.runs, i, workers)), share.fraction)
        for i, share in enumerate(shares)
    ]
    return WorkerReport(
        trained=[name for name in new if seen[name] == "done" and name not in unrecorded],
        recorded=[name for name in new if seen[name] == "done" and name in unrecorded],
        diverged=[name for name in new if seen[name] != "done"],
        skipped=len(before),
        unfinished=[run.name for run in plan.runs if run.name not in seen],
        statuses=[proc.returncode for proc in procs],
        logs=logs,
        rows=rebuild_csv(sweep_dir, [run.name for run in plan.runs]),
        usage=side_by_side(parts, host.peak),
    )


def log_tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a worker's log."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])
