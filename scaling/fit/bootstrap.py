"""Bootstrap resampling: resample weights, percentile intervals, and refits of a law on every resample."""

from __future__ import annotations

import sys

import numpy as np

from scalelab.scaling.fit.lbfgs import LBFGSOptions
from scalelab.scaling.fit.parametric import REACH_RTOL, LawFit, solve

CHUNK = 1024  # resamples per minimiser call (one progress-bar tick); 4 starts each stay within one compiled shape


def resample_counts(rng: np.random.Generator, n: int, n_resamples: int, min_distinct: int = 1) -> np.ndarray:
    """(K, n) counts: how often each point is drawn in each resample of n points with replacement.

    Resamples with fewer than min_distinct distinct points are drawn again: a law refitted to fewer points
    than it has parameters is undetermined, and its refit would stay at the start, the full-data optimum,
    which makes the interval look narrower than it is. Needs n >= min_distinct + 1 to end quickly.
    """
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples)
    while (short := np.flatnonzero((counts > 0).sum(1) < min_distinct)).size:
        counts[short] = rng.multinomial(n, np.full(n, 1.0 / n), size=short.size)
    return counts.astype(np.float64)


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float] | None:
    """Central percentile interval of the finite samples, or None when there are none."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(s, [tail, 1.0 - tail])
    return float(lo), float(hi)


def bootstrap_starts(fit: LawFit, n_starts: int) -> np.ndarray:
    """Start points for the refits: the full-data optimum and up to n_starts-1 other distinct local optima.

    A resample perturbs the objective only slightly, so its optimum lies close to one of the optima the
    full grid found; starting there converges in a few iterations instead of re-running thousands of grid
    starts. The extra distinct optima let a resample move to another basin if it tips the balance.
    """
    sol = fit.solutions
    order = np.argsort(np.where(sol.converged, sol.f, np.inf))
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= n_starts or not np.isfinite(sol.f[i]) or not sol.converged[i]:
            break
        if all(abs(sol.f[i] - sol.f[j]) > REACH_RTOL * max(abs(sol.f[j]), 1e-12) for j in chosen):
            chosen.append(int(i))
    return sol.x[chosen]


def bootstrap_law(
    fit: LawFit,
    n_resamples: int,
    rng: np.random.Generator,
    n_starts: int = 4,
    options: LBFGSOptions | None = None,
    progress: bool = False,
) -> np.ndarray:
    """(K, p) optimum per resample of the points (rows resampled with replacement); NaN where no start converged.

    Needs fit.spare >= MIN_SPARE: with fewer spare points the resamples cannot show the real spread.
    """
    from tqdm import tqdm

    starts = bootstrap_starts(fit, n_starts)
    k = len(starts)
    n = fit.points.y.shape[0]
    out = np.full((n_resamples, starts.shape[1]), np.nan)
    # disable=None: the bar shows only on a terminal, so logs and captured output stay clean.
    bar = tqdm(
        total=n_resamples,
        desc=f"bootstrap {fit.law.name}",
        unit="resample",
        disable=None if progress else True,
        file=sys.stderr,
    )
    with bar:
        for lo in range(0, n_resamples, CHUNK):
            hi = min(lo + CHUNK, n_resamples)
            counts = resample_counts(rng, n, hi - lo, min_distinct=len(fit.law.params))
            sol = solve(
                fit.law,
                np.tile(starts, (hi - lo, 1)),
                fit.points,
                fit.delta,
                weights=counts,
                weight_index=np.repeat(np.arange(hi - lo), k),
                options=options,
            )
            f = np.where(sol.converged, sol.f, np.inf).reshape(hi - lo, k)
            x = sol.x.reshape(hi - lo, k, -1)
            best = np.argmin(f, axis=1)
            good = np.isfinite(f[np.arange(hi - lo), best])
            out[lo:hi][good] = x[np.arange(hi - lo), best][good]
            bar.update(hi - lo)
    return out
