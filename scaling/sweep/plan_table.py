"""`sweep plan`'s table: one line per run, the total compute, branch savings and the fits the plan supports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scalelab.scaling.fit.support import fit_support, format_support
from scalelab.scaling.sweep.plan import Plan, PlannedRun
from scalelab.units import si


def format_plan(plan: Plan, runs: Sequence[PlannedRun] | None = None) -> str:
    """The plan as a table, one run per line, with the total compute and the fits the whole plan supports."""
    runs = plan.runs if runs is None else runs
    header = ("run", "N", "N_nonembed", "shape", "D", "D/N", "C", "steps", "batch", "lr")
    rows = [
        (
            run.name,
            si(run.n_total),
            si(run.n_nonembed),
            run.shape,
            si(run.tokens),
            f"{run.tokens / run.size:.3g}",
            f"{run.flops:.3g}",
            str(run.steps),
            str(run.batch_size),
            f"{run.lr:.3g}",
        )
        for run in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    total = sum(run.flops for run in runs)
    lines.append(f"{len(runs)} runs, total compute {total:.3g} FLOPs ({si(sum(r.tokens for r in runs))} tokens)")
    if plan.trunks:
        lines.append(format_branch_savings(plan, runs))
    if runs and runs[0].config.model.parametrization == "mup":
        lines.append(format_mup(plan))
    # Judged on every run of the plan (a shard alone supports nothing): the columns results.csv will hold.
    columns = (np.array([getattr(r, key) for r in plan.runs], dtype=float) for key in ("n_total", "tokens", "flops"))
    support = fit_support(*columns, names=[r.name for r in plan.runs])
    lines.append(format_support(support))
    multipliers = plan.spec.rules.lr_multipliers
    if len(multipliers) > 1:
        sizes = len({run.size for run in plan.runs})
        verdict = "yes" if len(multipliers) >= 3 and sizes >= 2 else "no (needs 3+ learning rates and 2+ sizes)"
        lines.append(f"  lr rule (--approach lr): {verdict} ({sizes} sizes x {len(multipliers)} learning rates)")
    return "\n".join(lines)


def format_branch_savings(plan: Plan, runs: Sequence[PlannedRun]) -> str:
    """What branching off shared trunks trains, against the same runs trained independently."""
    names = {run.name for run in runs}
    trunks = [trunk for trunk in plan.trunks if names & set(trunk.runs)]
    trained = sum(run.trained_flops for run in runs) + sum(trunk.flops for trunk in trunks)
    independent = sum(run.flops for run in runs)
    return (
        f"branches: {len(trunks)} constant-lr trunk(s) and {len(runs)} cooldown branch(es) train {trained:.3g} FLOPs, "
        f"against {independent:.3g} for independent runs: {1 - trained / independent:.0%} saved "
        f"(cooldown {plan.spec.branches.cooldown_fraction:g} of each run)"
    )


def format_mup(plan: Plan) -> str:
    """What µP promises this plan: the widths that share the base width's hyperparameters, and what it does not cover."""
    model = plan.runs[0].config.model
    widths = sorted({run.config.model.d_model for run in plan.runs})
    depths = sorted({run.config.model.n_layers for run in plan.runs})
    line = (
        f"muP: d_model {widths[0]} to {widths[-1]} take the hyperparameters tuned at d_model {model.mup_base_width} "
        "(model.mup_base_width)"
    )
    if len(depths) > 1:
        line += f"; depth also changes ({depths[0]} to {depths[-1]} layers), which muP does not transfer"
    if plan.spec.rules.lr.exponent:
        line += f"; rules.lr also scales with N (exponent {plan.spec.rules.lr.exponent:g}), on top of muP"
    return line
