"""Fit a law (approach 3, Kaplan, single-variable) by L-BFGS from every point of a start grid."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from scalelab.scaling.fit.formulas import FEATURE_ROWS, HUBER_DELTA, THETA_SIZE, Law, objective
from scalelab.scaling.fit.lbfgs import LBFGSOptions, Solutions, Status, minimize_many
from scalelab.scaling.fit.table import MIN_SPARE, FitInputError, FitTable, FitWarning, describe, group_by_c

# Starts whose objective is within this relative distance of the best one "reached the best optimum".
# The objective is evaluated in float32 (resolution ~1e-7), so 1e-4 separates real local optima from rounding.
REACH_RTOL = 1e-4


@dataclass(frozen=True)
class Points:
    """What a law is fitted to: log-features (k, n), log losses (n,), and where each point comes from."""

    x: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LawFit:
    """The best optimum over the start grid, how it stopped, and how many starts reached it."""

    law: Law
    points: Points
    theta: np.ndarray
    objective: float
    status: Status
    n_starts: int
    n_reached: int
    delta: float
    solutions: Solutions

    @property
    def converged(self) -> bool:
        """The best start stopped on a convergence test with finite parameters."""
        return self.status in (Status.GTOL, Status.FTOL, Status.STALLED) and bool(np.all(np.isfinite(self.theta)))

    @property
    def spare(self) -> int:
        """Residual degrees of freedom: points beyond the law's parameters."""
        return int(self.points.y.size) - len(self.law.params)

    @property
    def residuals(self) -> np.ndarray:
        """log(observed) - log(predicted) per point."""
        return self.points.y - np.log(self.law.predict(self.theta, self.points.x))

    @property
    def r2(self) -> float:
        """Share of the variance of log loss that the law explains."""
        y = self.points.y
        total = float(np.sum((y - y.mean()) ** 2))
        return float(1.0 - np.sum(self.residuals**2) / total) if total > 0 else float("nan")


# What a law's points are, (one, several): the rows of the table, or the best runs along one variable.
POINT_NAMES = {
    "rows": ("row", "rows"),
    "N": ("model size", "model sizes"),
    "D": ("token count", "token counts"),
    "C": ("point on the compute frontier", "points on the compute frontier"),
}


def _count(n: int, points: str) -> str:
    one, several = POINT_NAMES[points]
    return f"{n} {one if n == 1 else several}"


def _require(n_points: int, law: Law, points: str, labels: tuple[str, ...]) -> None:
    p = len(law.params)
    if n_points < p:
        raise FitInputError(
            f"{law.name} has {p} parameters but only {_count(n_points, points)} ({describe(list(labels))}); "
            f"add runs so there are at least {p}"
        )
    spare = n_points - p
    if spare < MIN_SPARE:
        more = _count(MIN_SPARE - spare, points).replace(" ", " more ", 1)
        warnings.warn(
            f"{law.name} has {p} parameters and only {_count(n_points, points)}, {spare} to spare: its intervals are "
            f"undetermined (n/a) and its fit says little; add {more} for intervals",
            FitWarning,
            stacklevel=3,
        )


def _distinct(values: np.ndarray, name: str, law: Law, table: FitTable) -> None:
    if np.unique(values).size < 2:
        raise FitInputError(
            f"{law.name} needs several values of {name}, but every row has {name} = {values[0]:.4g} "
            f"({table.rows(np.arange(len(values)))}); add runs with other values of {name}"
        )


def _best_per_value(values: np.ndarray, loss: np.ndarray, labels: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """For each distinct value, the lowest loss reached at it (and that row's label)."""
    keys, inverse = np.unique(values, return_inverse=True)
    best = [int(np.flatnonzero(inverse == i)[np.argmin(loss[inverse == i])]) for i in range(len(keys))]
    return keys, loss[best], np.array(labels, dtype=object)[best]


def law_points(table: FitTable, law: Law, c_rtol: float = 0.05) -> Points:
    """The points a law is fitted to; single-variable laws use the best loss at each value (see docs/fitting.md)."""
    if len(law.features) == 2:
        _distinct(table.N, "N", law, table)
        _distinct(table.D, "D", law, table)
        points = Points(np.log(np.stack([table.N, table.D])), np.log(table.loss), table.labels)
        _require(len(table), law, "rows", table.labels)
        return points
    (var,) = law.features
    if var == "C":
        # The compute frontier: the best run of each isoFLOP group, kept if it beats every smaller budget.
        groups = group_by_c(table.C, c_rtol)
        best = [int(g[np.argmin(table.loss[g])]) for g in groups]
        frontier = [i for j, i in enumerate(best) if all(table.loss[i] < table.loss[k] for k in best[:j])]
        x, loss, labels = table.C[frontier], table.loss[frontier], tuple(table.labels[i] for i in frontier)
    else:
        # L(N): the best loss each size reached over its budgets; L(D): the best over sizes at each token count.
        x, loss, labels = _best_per_value(getattr(table, var), table.loss, table.labels)
        labels = tuple(labels)
    _require(len(x), law, var, labels)
    return Points(np.log(x)[None, :], np.log(loss), labels)


def solve(
    law: Law,
    starts: np.ndarray,
    points: Points,
    delta: float,
    weights: np.ndarray | None = None,
    weight_index: np.ndarray | None = None,
    options: LBFGSOptions | None = None,
) -> Solutions:
    """Minimise the law's objective from each start; theta and features are padded to the shared shapes."""
    p = starts.shape[1]
    padded = np.zeros((len(starts), THETA_SIZE))
    padded[:, :p] = starts
    x = np.zeros((FEATURE_ROWS, points.x.shape[1]))
    x[: points.x.shape[0]] = points.x
    sol = minimize_many(objective, padded, x, points.y, delta, law.form, weights, weight_index, options)
    return Solutions(x=sol.x[:, :p], f=sol.f, status=sol.status, iters=sol.iters, evals=sol.evals)


def fit_law(
    law: Law,
    points: Points,
    grid: Mapping[str, tuple[float, ...]] | None = None,
    delta: float = HUBER_DELTA,
    options: LBFGSOptions | None = None,
) -> LawFit:
    """Minimise the Huber objective from every grid start; keep the best optimum and count who reached it."""
    starts = law.grid(grid)
    sol = solve(law, starts, points, delta, options=options)
    ok = sol.converged
    candidates = np.where(ok, sol.f, np.inf)
    if not np.isfinite(candidates).any():
        # No start converged: report the lowest objective seen, flagged by its status as not converged.
        candidates = np.where(np.isfinite(sol.f), sol.f, np.inf)
    best = int(np.argmin(candidates))
    f_best = float(sol.f[best])
    reached = ok & (np.abs(sol.f - f_best) <= REACH_RTOL * max(abs(f_best), 1e-12))
    return LawFit(
        law=law,
        points=points,
        theta=sol.x[best],
        objective=f_best,
        status=Status(int(sol.status[best])),
        n_starts=len(starts),
        n_reached=int(reached.sum()),
        delta=delta,
        solutions=sol,
    )
