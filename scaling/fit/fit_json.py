"""Run the requested fits on a table and assemble fit.json (schema in docs/fitting.md)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from scalelab.scaling.fit import allocation
from scalelab.scaling.fit.bootstrap import bootstrap_law, percentile_interval
from scalelab.scaling.fit.degenerate import ZERO_ATOL, degenerate_reason, single_optimum_reason
from scalelab.scaling.fit.formulas import APPROACH3, HUBER_DELTA, KAPLAN, SINGLE_LAWS, Law
from scalelab.scaling.fit.isoflop import AllocationFit, approach1, approach2
from scalelab.scaling.fit.parametric import LawFit, fit_law, law_points
from scalelab.scaling.fit.table import MIN_SPARE, FitInputError, FitTable, FitWarning, undetermined_reason

APPROACHES = ("1", "2", "3", "kaplan", "single")
# Laws with an N/D trade-off: (optimum at a budget, implied exponents a and b, the exponents' parameter names).
OPTIMA = {
    "approach3": (allocation.chinchilla_optimum, allocation.chinchilla_exponents, ("alpha", "beta")),
    "kaplan": (allocation.kaplan_optimum, allocation.kaplan_exponents, ("alpha_N", "alpha_D")),
}
# Quantities that can carry an interval, in fit.json order: law parameters, then derived ones.
INTERVAL_KEYS = (
    "E",
    "A",
    "B",
    "alpha",
    "beta",
    "N_c",
    "D_c",
    "alpha_N",
    "alpha_D",
    "a",
    "b",
    "N_opt",
    "D_opt",
    "loss_pred",
)
FRONTIER_POINTS = 60
FRONTIER_REACH = 100.0  # the N_opt(C) bands extend this factor beyond the largest budget in the table


@dataclass(frozen=True)
class FitSettings:
    """Everything that shapes a fit besides the table."""

    approaches: tuple[str, ...] = APPROACHES
    bootstrap: int = 1000
    level: float = 0.95
    budget: float | None = None
    seed: int = 0
    delta: float = HUBER_DELTA
    c_rtol: float = 0.1
    grids: Mapping[str, Mapping[str, tuple[float, ...]]] = field(default_factory=dict)  # law name -> param -> values
    boot_starts: int = 4
    progress: bool = False


def _num(x: object) -> float | None:
    v = float(np.asarray(x))
    return v if np.isfinite(v) else None


def _interval(samples: np.ndarray, level: float) -> list[float] | None:
    iv = percentile_interval(samples, level)
    return None if iv is None else [iv[0], iv[1]]


def _residuals(r: np.ndarray, x_name: str, x: np.ndarray) -> dict:
    """Log-space residuals with the variable they are plotted against."""
    return {
        "rmse": float(np.sqrt(np.mean(r**2))),
        "max_abs": float(np.max(np.abs(r))),
        "values": [float(v) for v in r],
        "x": x_name,
        "x_values": [float(v) for v in x],
    }


def _band(samples: np.ndarray, level: float) -> list[list[float | None]]:
    """Per-column percentile interval of (K, G) samples, as [[low...], [high...]]."""
    cols = [percentile_interval(samples[:, j], level) for j in range(samples.shape[1])]
    return [[None if c is None else c[0] for c in cols], [None if c is None else c[1] for c in cols]]


def _mark_undetermined(out: dict, reason: str) -> dict:
    """Every interval the object would carry as null, and why: resamples cannot show its real spread."""
    out["ci"] = {k: None for k in INTERVAL_KEYS if out.get(k) is not None}
    out["ci_undetermined"] = reason
    return out


def _settle(out: dict, s: FitSettings, undetermined: str | None, degenerate: str | None) -> dict:
    """Record whether the fit is degenerate; its intervals (if any were asked for) become null, with the reason."""
    if out.get("converged"):
        out["degenerate"] = degenerate
    if undetermined:
        return _mark_undetermined(out, undetermined)
    if degenerate and s.bootstrap:
        return _mark_undetermined(out, f"degenerate fit: {degenerate}")
    return out


def _fixed(law: Law) -> tuple[str, ...]:
    """Public parameters the law does not fit (E of the _E0 laws): the same whatever theta is."""
    p = len(law.params)
    values = law.to_public(np.stack([np.zeros(p), np.ones(p)]))
    return tuple(k for k, v in values.items() if v[0] == v[1])


def _frontier_grid(table: FitTable, budget: float | None) -> np.ndarray:
    top = max(table.C.max() * FRONTIER_REACH, 2 * budget if budget else 0.0)
    return np.geomspace(table.C.min(), top, FRONTIER_POINTS)


def _allocation_block(
    point: Callable, per_sample: Callable | None, table: FitTable, s: FitSettings, has_loss: bool
) -> tuple[dict, dict]:
    """Frontier bands and the budget prediction from C -> (N_opt, D_opt[, loss]) at the estimate and per sample.

    Returns (fields, interval fields); per_sample maps C (G,) to (K, G) arrays.
    """
    grid = _frontier_grid(table, s.budget)
    values = point(grid)
    boot = per_sample(grid) if per_sample else None
    frontier: dict = {"C": grid.tolist(), "data_range": [float(table.C.min()), float(table.C.max())]}
    for i, name in enumerate(("N_opt", "D_opt")):
        frontier[name] = [_num(v) for v in values[i]]
        frontier[f"{name}_ci"] = _band(boot[i], s.level) if boot is not None else None
    fields: dict = {"frontier": frontier}
    intervals: dict = {}
    if s.budget is not None:
        budget = np.array([s.budget])
        at = point(budget)
        bt = per_sample(budget) if per_sample else None
        fields["budget"] = s.budget
        for i, name in enumerate(("N_opt", "D_opt", "loss_pred")[: 3 if has_loss else 2]):
            fields[name] = _num(at[i][0])
            intervals[name] = _interval(bt[i][:, 0], s.level) if bt is not None else None
        if not has_loss:
            fields["loss_pred"] = None  # approaches 1 and 2 have no loss model
    return fields, intervals


def summarize_law(
    fit: LawFit, boot: np.ndarray | None, table: FitTable, s: FitSettings, undetermined: str | None = None
) -> dict:
    """fit.json object for approach 3, Kaplan or a single-variable law."""
    law = fit.law
    out: dict = {
        "formula": law.formula,
        "converged": fit.converged,
        "status": fit.status.name.lower(),
        "n_points": int(fit.points.y.size),
        "starts": fit.n_starts,
        "starts_at_best": fit.n_reached,
        "huber_delta": fit.delta,
    }
    if not fit.converged:
        # Never report numbers from a fit that did not converge.
        return out | dict.fromkeys(law.to_public(fit.theta), None) | {"ci": None}
    public = {k: float(v) for k, v in law.to_public(fit.theta).items()}
    _warn_rising(law, public)
    samples = law.to_public(boot) if boot is not None else None
    out |= public
    out["objective"] = fit.objective
    out["r2"] = fit.r2
    if law.features == ("N", "D"):
        x_name, x = "C", table.C
    else:
        x_name, x = law.features[0], np.exp(fit.points.x[0])
    out["residuals"] = _residuals(fit.residuals, x_name, x)
    out["ci"] = {k: _interval(v, s.level) for k, v in samples.items()} if samples else None
    if boot is not None:
        out["bootstrap"] = {"resamples": len(boot), "failed": int(np.isnan(boot[:, 0]).sum())}
    k = table.flops_per_param_token
    if law.name in OPTIMA:
        optimum, exponents, exponent_names = OPTIMA[law.name]
        out["a"], out["b"] = (float(v) for v in exponents(*(public[n] for n in exponent_names)))
        if samples:
            a, b = exponents(*(samples[n] for n in exponent_names))
            out["ci"]["a"], out["ci"]["b"] = _interval(a, s.level), _interval(b, s.level)

        def point(c: np.ndarray) -> tuple:
            return optimum(**public, C=c, k=k)

        def per_sample(c: np.ndarray) -> tuple:
            return optimum(**{n: v[:, None] for n, v in samples.items()}, C=c[None, :], k=k)

        fields, intervals = _allocation_block(point, per_sample if samples else None, table, s, has_loss=True)
        out |= fields
        if out["ci"] is not None:
            out["ci"] |= intervals
    elif law.features == ("C",) and s.budget is not None:
        # A compute law predicts the best loss reachable at a budget (it has no N/D split).
        out["budget"] = s.budget
        out["loss_pred"] = public["E"] + public["A"] * s.budget ** -public["alpha"]
        if samples:
            out["ci"]["loss_pred"] = _interval(samples["E"] + samples["A"] * s.budget ** -samples["alpha"], s.level)
    return _settle(out, s, undetermined, degenerate_reason(out, _fixed(law)))


def _warn_rising(law: Law, public: dict[str, float]) -> None:
    """A loss exponent below zero says the loss rises with N, D or C: worth a look before anyone quotes it."""
    for name in ("alpha", "beta", "alpha_N", "alpha_D"):
        value = public.get(name)
        if value is not None and value < -ZERO_ATOL:
            variable = {"beta": "D", "alpha_D": "D", "alpha_N": "N"}.get(name, law.features[0])
            warnings.warn(
                f"{law.name}: {name} = {value:.3g} is negative, so the fitted loss rises with {variable}; the runs do "
                f"not show loss falling as {variable} grows (look for larger runs that diverged or were undertrained, "
                "or a learning rate too high for them)",
                FitWarning,
                stacklevel=3,
            )


def summarize_allocation(fit: AllocationFit, table: FitTable, s: FitSettings) -> dict:
    """fit.json object for approach 1 or 2."""
    out: dict = {"converged": fit.converged, "n_points": fit.n_points}
    if not fit.converged:
        return out | {"a": None, "b": None, "ci": None}
    out |= {"a": fit.a, "b": fit.b, "G_N": float(np.exp(fit.log_gn)), "G_D": float(np.exp(fit.log_gd))}
    out["r2"] = fit.r2_n
    out["r2_D"] = fit.r2_d
    out["residuals"] = _residuals(fit.residuals(), "C", fit.C)
    boot = fit.boot
    out["ci"] = None
    if boot is not None:
        out["ci"] = {"a": _interval(boot[:, 0], s.level), "b": _interval(boot[:, 2], s.level)}
        out["bootstrap"] = {"resamples": len(boot), "failed": int(np.isnan(boot[:, 0]).sum())}
    points = {"C": fit.C.tolist(), "N_opt": fit.N_opt.tolist(), "D_opt": fit.D_opt.tolist(), "loss": fit.loss.tolist()}
    if fit.name == "approach1":
        out["from_curves"] = fit.from_curves
        out["envelope"] = points
    else:
        out["minima"] = points
        out["groups"] = [
            {
                "C": g.C,
                "rows": [table.labels[i] for i in g.rows],
                "usable": g.usable,
                "center": g.center,
                "coef": None if g.coef is None else g.coef.tolist(),
                "N_opt": _num(g.N_opt),
                "D_opt": _num(g.D_opt),
                "loss_min": _num(g.loss_min),
            }
            for g in fit.groups
        ]

    def point(c: np.ndarray) -> tuple:
        return allocation.power_law_optimum(fit.a, fit.log_gn, fit.b, fit.log_gd, c)

    def per_sample(c: np.ndarray) -> tuple:
        return allocation.power_law_optimum(*(boot[:, i, None] for i in range(4)), c[None, :])

    fields, intervals = _allocation_block(point, per_sample if boot is not None else None, table, s, has_loss=False)
    out |= fields
    if out["ci"] is not None:
        out["ci"] |= intervals
    return _settle(out, s, fit.ci_undetermined, single_optimum_reason(fit.N_opt) or degenerate_reason(out))


def _laws(s: FitSettings) -> list[Law]:
    laws = []
    if "3" in s.approaches:
        laws.append(APPROACH3)
    if "kaplan" in s.approaches:
        laws.append(KAPLAN)
    if "single" in s.approaches:
        laws.extend(SINGLE_LAWS)
    return laws


def run_fits(table: FitTable, s: FitSettings) -> dict:
    """Fit every requested approach; with several, one that cannot be fitted is listed under 'skipped' instead."""
    rng = np.random.default_rng(s.seed)
    result: dict = {}
    skipped: dict[str, str] = {}
    several = len(s.approaches) > 1

    def attempt(name: str, run: Callable[[], dict]) -> None:
        try:
            result[name] = run()
        except FitInputError as error:
            if not several:
                raise
            skipped[name] = str(error)

    for name, fn in (("1", approach1), ("2", approach2)):
        if name in s.approaches:
            attempt(
                f"approach{name}", lambda fn=fn: summarize_allocation(fn(table, s.bootstrap, rng, s.c_rtol), table, s)
            )
    for law in _laws(s):
        attempt(law.name, lambda law=law: _fit_and_summarize(law, table, s, rng))
    for name, obj in result.items():
        boot = obj.get("bootstrap")
        if boot and not obj.get("degenerate") and boot["failed"] > 0.05 * boot["resamples"]:
            warnings.warn(
                f"{name}: {boot['failed']} of {boot['resamples']} bootstrap resamples gave no fit; its intervals "
                "come from the others and may be too narrow",
                FitWarning,
                stacklevel=2,
            )
    if skipped:
        result["skipped"] = skipped
    return result


def _fit_and_summarize(law: Law, table: FitTable, s: FitSettings, rng: np.random.Generator) -> dict:
    fit = fit_law(law, law_points(table, law, s.c_rtol), grid=s.grids.get(law.name), delta=s.delta)
    boot, undetermined = None, None
    if s.bootstrap and fit.converged:
        if fit.spare >= MIN_SPARE:
            boot = bootstrap_law(fit, s.bootstrap, rng, n_starts=s.boot_starts, progress=s.progress)
        else:
            # law_points has warned about it, naming how many more points are needed.
            undetermined = undetermined_reason(fit.spare)
    return summarize_law(fit, boot, table, s, undetermined)
