"""The learning-rate rule from a learning-rate × size grid: the best lr of each size, fit as lr* = a N^b.

Porian et al. (2024) find that a compute-optimal sweep needs the learning rate (and batch size)
tuned per size; with one lr for all sizes the loss of the mis-tuned ones bends the isoFLOP curves.
A sweep with `rules.lr_multipliers` trains each cell at several learning rates; this module takes
its results, finds each size's best learning rate (the vertex of a parabola in log lr through the
best point and its neighbours) and fits a power law in N through them. The rule is written as
JSON that a spec's `rules.lr: {from_fit: PATH}` reads, and printed as the YAML to paste.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.files import read_json, write_atomic
from scalelab.scaling.fit.table import FitInputError, FitTable, FitWarning

LR_RULE_FILE = "lr_rule.json"


@dataclasses.dataclass(frozen=True)
class BestLr:
    """One (N, D) cell's learning-rate scan and its best learning rate."""

    N: float
    D: float
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    best: float
    at_edge: bool  # the lowest loss was at the smallest or largest lr: the true best may lie outside


@dataclasses.dataclass(frozen=True)
class LrRule:
    """lr*(N) = value × (N / ref_params) ** exponent, from the best learning rates of `cells`."""

    value: float
    ref_params: float
    exponent: float
    r2: float
    cells: tuple[BestLr, ...]

    def at(self, n: float) -> float:
        """The rule's learning rate for size `n`."""
        return self.value * (n / self.ref_params) ** self.exponent

    def as_yaml(self) -> str:
        """The spec lines that use this rule."""
        return f"rules:\n  lr: {{value: {self.value:.3g}, ref_params: {self.ref_params:.3g}, exponent: {self.exponent:.3g}}}"


def best_lr(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, bool]:
    """The best learning rate of one scan, and whether it sits at the scan's edge.

    An interior minimum is refined by the parabola in log lr through it and its two neighbours,
    whose vertex lies between them; at an edge, the edge itself is all the scan can say.
    """
    order = np.argsort(lrs)
    x, y = np.log(lrs[order]), losses[order]
    i = int(np.argmin(y))
    if i == 0 or i == len(x) - 1:
        return float(math.exp(x[i])), True
    a, b, _ = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    vertex = -b / (2 * a) if a > 0 else x[i]
    return float(math.exp(np.clip(vertex, x[i - 1], x[i + 1]))), False


def fit_lr_rule(table: FitTable) -> LrRule:
    """The best learning rate of each (N, D) cell of `table` (which has an `lr` column), fit as a power law in N."""
    lr = table.extra["lr"]
    cells: list[BestLr] = []
    keys = sorted({(float(n), float(d)) for n, d in zip(table.N, table.D, strict=True)})
    for n, d in keys:
        rows = np.flatnonzero((n == table.N) & (d == table.D))
        distinct = np.unique(lr[rows])
        if len(distinct) < 3:
            raise FitInputError(
                f"the cell N={n:.3g}, D={d:.3g} has {len(distinct)} learning rate(s) ({table.rows(rows)}); a best "
                "learning rate needs at least 3: give the sweep rules.lr_multipliers, e.g. [0.25, 0.5, 1, 2, 4]"
            )
        # one loss per learning rate: the mean over seeds
        losses = np.array([table.loss[rows][lr[rows] == value].mean() for value in distinct])
        best, edge = best_lr(distinct, losses)
        cells.append(BestLr(n, d, tuple(distinct), tuple(losses), best, edge))
    edges = [c for c in cells if c.at_edge]
    if edges:
        shown = ", ".join(f"N={c.N:.3g} (best lr {c.best:.3g})" for c in edges[:4])
        warnings.warn(
            f"{len(edges)} of {len(cells)} cells have their lowest loss at the edge of the learning-rate grid: "
            f"{shown}; widen rules.lr_multipliers so the grid brackets the best learning rate",
            FitWarning,
            stacklevel=2,
        )
    sizes = np.array([c.N for c in cells])
    if len(np.unique(sizes)) < 2:
        raise FitInputError(
            f"the learning-rate grid has one model size (N={sizes[0]:.3g}); a rule in N needs at least 2 sizes"
        )
    log_n, log_lr = np.log(sizes), np.log([c.best for c in cells])
    exponent, intercept = np.polyfit(log_n, log_lr, 1)
    residual = log_lr - (intercept + exponent * log_n)
    spread = np.sum((log_lr - log_lr.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual**2) / spread) if spread > 0 else 1.0
    ref = float(10 ** round(float(np.mean(np.log10(sizes)))))  # a round reference size inside the data
    value = float(math.exp(intercept + exponent * math.log(ref)))
    return LrRule(value, ref, float(exponent), r2, tuple(cells))


def write_lr_rule(rule: LrRule, path: Path, source: str) -> None:
    """Save the rule (and the scans behind it) as JSON for a spec's `rules.lr: {from_fit: PATH}`."""
    payload = {
        "kind": "scalelab lr rule",
        "source": source,
        "lr": {"value": rule.value, "ref_params": rule.ref_params, "exponent": rule.exponent},
        "r2": rule.r2,
        "cells": [dataclasses.asdict(cell) for cell in rule.cells],
    }
    write_atomic(path, json.dumps(payload, indent=2) + "\n")


def read_lr_rule(path: Path) -> dict[str, Any]:
    """The {value, ref_params, exponent} of a saved rule; anything else is a FitInputError naming the file."""
    data = read_json(path, f"fit a learning-rate grid with `scalelab fit SWEEP --approach lr --out {path.parent}`")
    rule = data.get("lr") if isinstance(data, dict) else None
    if data.get("kind") != "scalelab lr rule" or not isinstance(rule, dict):
        raise FitInputError(
            f"{path} is not a learning-rate rule written by `scalelab fit --approach lr`; point rules.lr.from_fit "
            f"at the {LR_RULE_FILE} that command writes"
        )
    return {key: float(rule[key]) for key in ("value", "ref_params", "exponent")}


def format_lr_rule(rule: LrRule) -> str:
    """The scans, the best learning rates and the rule, as the command prints them."""
    lines = ["best learning rate per cell (vertex of a parabola in log lr; * at the grid's edge):"]
    for cell in rule.cells:
        scan = ", ".join(f"{lr:.3g}:{loss:.4f}" for lr, loss in zip(cell.lrs, cell.losses, strict=True))
        lines.append(f"  N={cell.N:.3g} D={cell.D:.3g}  best {cell.best:.3g}{'*' if cell.at_edge else ''}  [{scan}]")
    lines.append(
        f"lr*(N) = {rule.value:.3g} x (N / {rule.ref_params:.3g})^{rule.exponent:.3g}  (R^2 {rule.r2:.3f} in log lr)"
    )
    lines.append("use it in a sweep spec:\n" + rule.as_yaml())
    return "\n".join(lines)


def plot_lr_rule(rule: LrRule, path: Path) -> None:
    """Loss against learning rate for each cell, and the best learning rates against N with the rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (scans, law) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(rule.cells)))
    for cell, color in zip(rule.cells, colors, strict=True):
        scans.plot(cell.lrs, cell.losses, "o-", color=color, label=f"N={cell.N:.3g}")
        scans.axvline(cell.best, color=color, lw=0.8, ls=":")
    scans.set(xscale="log", xlabel="learning rate", ylabel="loss", title="loss against learning rate")
    scans.legend(fontsize=8)
    sizes = np.array([c.N for c in rule.cells])
    law.scatter(sizes, [c.best for c in rule.cells], color=colors, zorder=3)
    grid = np.geomspace(sizes.min() / 1.5, sizes.max() * 1.5, 50)
    law.plot(grid, rule.at(grid), "k--", label=f"lr* ∝ N^{rule.exponent:.2f}")
    law.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="best learning rate", title="best lr against N")
    law.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
