"""When a fit is degenerate: its numbers describe no trend, so no interval may be printed for them.

A degenerate fit can still "converge" and its bootstrap can still return percentiles, which then look
exact (e.g. a = 4e-29 in [0, 4e-29]) while measuring nothing. A converged fit is degenerate when any of:

1. its R² (log space) is below R2_FLOOR, or undefined because the fitted points do not vary: the
   law explains none of the variation it was fitted to;
2. an exponent it fitted (alpha, beta, alpha_N, alpha_D, a, b) is numerically zero, |v| <= ZERO_ATOL:
   the power law collapsed to a constant (for approaches 1 and 2: one size is optimal at every budget);
3. an interval of a fitted quantity has (numerically) zero width: every resample gave the same value,
   which no real noise produces. Parameters a law fixes (E of the _E0 laws) are exempt: they are not fitted.
"""

from __future__ import annotations

import math

import numpy as np

# Share of the variance of the log values that a law must explain to describe a trend at all.
R2_FLOOR = 0.01
# An exponent this close to zero is zero: fits reach ~1e-29 by rounding when the trend is absent.
ZERO_ATOL = 1e-9
# An interval narrower than this (relative to its largest end, or absolute for exponents) has zero width.
WIDTH_RTOL = 1e-9
EXPONENTS = ("alpha", "beta", "alpha_N", "alpha_D", "a", "b")


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def degenerate_reason(obj: dict, fixed: tuple[str, ...] = ()) -> str | None:
    """Why the fit.json object `obj` (before intervals are marked) is degenerate, or None; see the module doc."""
    if not obj.get("converged"):
        return None  # a fit that did not converge reports no numbers at all
    r2 = obj.get("r2")
    if r2 is None or not math.isfinite(r2):
        return "R² is undefined: the points it was fitted to do not vary"
    if r2 < R2_FLOOR:
        return f"R² {r2:.2g} is below {R2_FLOOR:g}: the law explains none of the variation"
    for name in EXPONENTS:
        v = obj.get(name)
        if name not in fixed and _finite(v) and abs(v) <= ZERO_ATOL:
            return f"{name} is numerically zero ({v:.2g}): the power law collapsed to a constant"
    for name, iv in (obj.get("ci") or {}).items():
        if name in fixed or not iv or not all(_finite(e) for e in iv):
            continue
        floor = ZERO_ATOL if name in EXPONENTS else 0.0
        if iv[1] - iv[0] <= max(WIDTH_RTOL * max(abs(iv[0]), abs(iv[1])), floor):
            return f"the interval of {name} has zero width: every resample gave the same value"
    return None


def single_optimum_reason(n_opt: np.ndarray) -> str | None:
    """Approaches 1 and 2: one size optimal at every budget leaves a = 0 by construction, whatever R² says."""
    sizes = np.unique(n_opt)
    if sizes.size < 2:
        return f"one size (N = {sizes[0]:.4g}) is optimal at every budget, so a = 0 by construction"
    return None
