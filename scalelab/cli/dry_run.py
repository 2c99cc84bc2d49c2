"""`--dry-run` for `scalelab train` and `scalelab sweep run`: print what the launch decides, then stop.

Everything is worked out before a device is touched or jax.distributed starts, with the real
run's checks, so a job script can be tried on a login node (or under a test's fake `srun`) and
a mesh that does not fit the cluster fails with the same one line the real run would print.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from scalelab.parallel.distributed import STARTUP_TIMEOUT_ENV, startup_timeout_s
from scalelab.parallel.launch_plan import ProcessPlace, data_shard, devices_per_process, expected_mesh, locate_process


class JobDevices:
    """The processes of a job and the devices they will have, read once for every config checked."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str] = os.environ):
        self.place: ProcessPlace = locate_process(args, environ)
        # Read only where the real run reads it: a single process never waits at start-up.
        self.startup_timeout_s = None if self.place.initialize is None else startup_timeout_s(environ)
        per_process, self.source = devices_per_process(self.place, environ, args.devices_per_process)
        if per_process is None:  # nothing tells: this host's own devices (a single process, or a TPU host)
            import jax

            per_process = jax.local_device_count()
        self.per_process = per_process
        self.count = per_process * self.place.process_count

    def header(self) -> list[str]:
        """The lines that hold for every config of the launch."""
        place = self.place
        if place.initialize is None:
            init = "not called (one process)"
        elif place.initialize:
            init = ", ".join(f"{key}={value!r}" for key, value in place.initialize.items())
        else:
            init = f"no arguments: JAX reads the {place.cluster} cluster (coordinator: {place.coordinator})"
        wait = f"up to {self.startup_timeout_s} s for every process to reach the coordinator ({STARTUP_TIMEOUT_ENV})"
        return [
            "dry run: nothing was started; this is what the launch would do",
            f"cluster: {place.cluster or 'none'}",
            f"jax.distributed.initialize: {init}",
            *([] if place.initialize is None else [f"start-up wait: {wait}"]),
            f"process: {place.process_index} of {place.process_count}",
            f"devices: {self.count} = {place.process_count} process(es) x {self.per_process} ({self.source})",
        ]

    def layout_lines(self, cfg, prefix: str = "") -> list[str]:
        """The mesh and batch rows of `cfg` on this job, checked as the real run checks them."""
        from jax.sharding import NamedSharding

        from scalelab.data import process_rows
        from scalelab.model.functional import describe
        from scalelab.parallel.rules import make_rules, tree_shardings
        from scalelab.train.trainer import check_batch, pipeline_plan

        # In the order Trainer.build meets them, so the first problem is the one the real run reports.
        layout = expected_mesh(cfg.mesh, self.count, self.place)
        pipeline = pipeline_plan(cfg, layout.sizes["pipeline"])
        model = describe(cfg.model)  # shapes only, traced abstractly
        tree_shardings(model.axes, model.shapes, make_rules(cfg.mesh.rules), layout.mesh)
        check_batch(cfg, NamedSharding(layout.mesh, layout.batch_spec), pipeline)
        rows = cfg.train.batch_size
        index, count = data_shard(layout, self.place, self.per_process, rows)
        mine = process_rows(rows, index, count)
        shape = " ".join(f"{axis}={size}" for axis, size in layout.sizes.items())
        over = " x ".join(layout.batch_axes) or "no axis (every device holds the whole batch)"
        return [
            f"{prefix}mesh: {shape} on {self.count} devices; batch rows split over {over}",
            f"{prefix}batch: {rows} rows global, {mine.stop - mine.start} per process; this process feeds "
            f"rows {mine.start}:{mine.stop} (data shard {index} of {count})",
        ]


def dry_run_train(args: argparse.Namespace, cfg, run_dir: Path) -> int:
    """Print the launch of `scalelab train` and return its exit status."""
    job = JobDevices(args)
    lines = job.header() + job.layout_lines(cfg) + [f"run dir: {run_dir}"]
    print("\n".join(lines))
    return 0


def dry_run_sweep(args: argparse.Namespace, plan, shard: tuple[int, int], runs, sweep_dir: Path) -> int:
    """Print the launch of `scalelab sweep run`: the shard, then each of its runs' mesh and batch rows."""
    from scalelab.errors import ConfigError

    job = JobDevices(args)
    lines = job.header()
    lines.append(f"sweep: {plan.spec.name}, shard {shard[0]}/{shard[1]}: {len(runs)} of {len(plan.runs)} runs")
    lines.append(f"sweep dir: {sweep_dir}")
    for run in runs:
        try:
            lines += job.layout_lines(run.config, prefix=f"run {run.name}: ")
        except ConfigError as error:  # say which run: a sweep's runs differ in batch size and depth
            raise ConfigError(f"run {run.name}: {error}") from None
        lines.append(f"run {run.name}: run dir: {sweep_dir / 'runs' / run.name}")
    print("\n".join(lines))
    return 0
