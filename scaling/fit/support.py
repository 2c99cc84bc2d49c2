"""Which fits a set of planned runs can support, judged by the fitters themselves before any compute is spent.

The planned (N, D, C) points go through the same code `scalelab fit` runs: approach 1 and 2 fitters
and each law's point selection, with their own requirements (sizes per budget, budgets, points to
spare for intervals). Losses do not exist yet, so a Chinchilla-shaped stand-in law supplies them; it
only decides what needs losses (a parabola's direction, the compute frontier), and a real sweep
whose sizes bracket the optimum behaves the same. Nothing is restated here, so plan and fit agree.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scalelab.scaling.fit.fit_json import FitSettings
from scalelab.scaling.fit.formulas import APPROACH3, KAPLAN, SINGLE_LAWS
from scalelab.scaling.fit.isoflop import approach1, approach2
from scalelab.scaling.fit.parametric import law_points
from scalelab.scaling.fit.report import label
from scalelab.scaling.fit.table import MIN_SPARE, Curve, FitInputError, FitTable, undetermined_reason

# The stand-in law (Hoffmann et al. 2022, eq. 10): convex in log N at fixed C, as real isoFLOP profiles are.
STAND_IN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
CURVE_POINTS = 8  # logged points per stand-in training curve (a sweep logs many; approach 1 needs a few)


@dataclass(frozen=True)
class Support:
    """One fit's verdict: 'yes', 'no intervals' (fits, but its intervals would be n/a) or 'no', and why."""

    name: str
    verdict: str
    reason: str = ""

    def line(self) -> str:
        """'approach 2: no (why)' for the plan printout."""
        return f"{label(self.name)}: {self.verdict}" + (f" ({self.reason})" if self.reason else "")


def _loss(N: np.ndarray, D: np.ndarray) -> np.ndarray:
    p = STAND_IN
    return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]


def stand_in_table(N: np.ndarray, D: np.ndarray, C: np.ndarray, names: Sequence[str] | None = None) -> FitTable:
    """The planned points as a fit table, with stand-in losses and training curves (one per run)."""
    N, D, C = (np.asarray(v, dtype=float) for v in (N, D, C))
    labels = tuple(f"run {name}" for name in (names or [str(i) for i in range(len(N))]))
    frac = np.linspace(1 / CURVE_POINTS, 1, CURVE_POINTS)
    curves = tuple(
        Curve(run=labels[i], N=N[i], C=C[i] * frac, D=D[i] * frac, loss=_loss(N[i], D[i] * frac)) for i in range(len(N))
    )
    return FitTable(
        N=N,
        D=D,
        C=C,
        loss=_loss(N, D),
        labels=labels,
        source="the plan",
        columns={"N": "N", "D": "D", "C": "C", "loss": "loss"},
        flops_per_param_token=float(np.median(C / (N * D))),
        curves=curves,
    )


def _allocation(name: str, table: FitTable, c_rtol: float) -> Support:
    fitter = approach1 if name == "approach1" else approach2
    try:
        # One resample: enough for the fitter to decide whether intervals are determined.
        fit = fitter(table, 1, np.random.default_rng(0), c_rtol)
    except FitInputError as error:
        return Support(name, "no", str(error))
    if fit.ci_undetermined:
        return Support(name, "no intervals", fit.ci_undetermined)
    return Support(name, "yes", f"{fit.n_points} points for N_opt(C)")


def _law(law: object, table: FitTable, c_rtol: float) -> Support:
    try:
        points = law_points(table, law, c_rtol)
    except FitInputError as error:
        return Support(law.name, "no", str(error))
    spare = points.y.size - len(law.params)
    if spare < MIN_SPARE:
        return Support(
            law.name,
            "no intervals",
            f"{points.y.size} points for {len(law.params)} parameters: {undetermined_reason(spare)}",
        )
    return Support(law.name, "yes", f"{points.y.size} points for {len(law.params)} parameters")


def fit_support(
    N: np.ndarray, D: np.ndarray, C: np.ndarray, names: Sequence[str] | None = None, c_rtol: float | None = None
) -> list[Support]:
    """What `scalelab fit` (all approaches, default settings) could make of runs at these N, D and C."""
    c_rtol = FitSettings().c_rtol if c_rtol is None else c_rtol
    table = stand_in_table(N, D, C, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fitters' warnings are for a real fit; the verdicts carry the reasons
        verdicts = [_allocation(name, table, c_rtol) for name in ("approach1", "approach2")]
        verdicts += [_law(law, table, c_rtol) for law in (APPROACH3, KAPLAN, *SINGLE_LAWS)]
    return verdicts


def format_support(verdicts: list[Support]) -> str:
    """The verdicts as the plan prints them: one line per fit, what cannot be fitted first named."""
    lines = ["", "fits these runs support (checked by the fitters on the planned N, D, C):"]
    lines += [f"  {v.line()}" for v in verdicts]
    return "\n".join(lines)
