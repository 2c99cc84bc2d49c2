"""Chinchilla approaches 1 and 2: compute-optimal N and D from envelopes and isoFLOP parabolas, with bootstraps.

Both end in power laws N_opt = G_N C^a and D_opt = G_D C^b fitted by least squares in log space.
They are closed-form, so their bootstraps are vectorised numpy over resamples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from scalelab.scaling.fit.bootstrap import resample_counts
from scalelab.scaling.fit.table import MIN_SPARE, FitInputError, FitTable, FitWarning, group_by_c, undetermined_reason

ENVELOPE_POINTS = 100  # log-spaced FLOP values at which approach 1 takes the minimum over curves
PARABOLA_SIZES = 3  # distinct sizes an isoFLOP group needs for a parabola (3 coefficients)
MIN_COVER = 2  # an envelope point needs at least this many runs reaching its FLOPs (one run is no comparison)


@dataclass(frozen=True)
class IsoFlopGroup:
    """One isoFLOP profile: its rows, the parabola loss = c0 + c1 u + c2 u² in u = log N - center, and its minimum."""

    C: float
    rows: np.ndarray
    center: float
    coef: np.ndarray | None
    N_opt: float
    D_opt: float
    loss_min: float
    usable: bool


@dataclass(frozen=True)
class AllocationFit:
    """N_opt(C) and D_opt(C) power laws from approach 1 or 2; boot holds (a, log G_N, b, log G_D) per resample."""

    name: str
    C: np.ndarray
    N_opt: np.ndarray
    D_opt: np.ndarray
    loss: np.ndarray
    a: float
    log_gn: float
    b: float
    log_gd: float
    r2_n: float
    r2_d: float
    boot: np.ndarray | None = None
    groups: tuple[IsoFlopGroup, ...] = field(default=())
    from_curves: bool = False
    ci_undetermined: str | None = None  # why there are no intervals although resamples were asked for

    @property
    def converged(self) -> bool:
        """Closed-form fits converge unless the points leave the slopes undetermined."""
        return bool(np.isfinite([self.a, self.b, self.log_gn, self.log_gd]).all())

    @property
    def n_points(self) -> int:
        """Number of (C, N_opt) points the power laws were fitted to."""
        return len(self.C)

    def residuals(self) -> np.ndarray:
        """log N_opt residuals of the fitted line (log D_opt residuals follow from C = k N D)."""
        return np.log(self.N_opt) - (self.a * np.log(self.C) + self.log_gn)


def _lines(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of y on x over the masked entries of the last axis (NaN if undetermined)."""
    m = mask.astype(np.float64)
    count = m.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (m * x).sum(-1) / count
        ym = (m * y).sum(-1) / count
        dx = np.where(mask, x - xm[..., None], 0.0)
        sxx = (dx * dx).sum(-1)
        slope = (dx * np.where(mask, y - ym[..., None], 0.0)).sum(-1) / sxx
    bad = (count < 2) | ~(sxx > 1e-12)
    slope = np.where(bad, np.nan, slope)
    return slope, np.where(bad, np.nan, ym - slope * xm)


def _r2(x: np.ndarray, y: np.ndarray, slope: float, intercept: float) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return float(1 - np.sum((y - slope * x - intercept) ** 2) / total) if total > 0 else float("nan")


def _allocation_fit(
    name: str,
    c: np.ndarray,
    n_opt: np.ndarray,
    d_opt: np.ndarray,
    loss: np.ndarray,
    boot: np.ndarray | None,
    **provenance: object,
) -> AllocationFit:
    """Power laws N_opt = G_N C^a and D_opt = G_D C^b through per-budget optima, least squares in log space."""
    logc = np.log(c)
    a, gn = (float(v) for v in _lines(logc, np.log(n_opt), np.ones_like(logc, bool)))
    b, gd = (float(v) for v in _lines(logc, np.log(d_opt), np.ones_like(logc, bool)))
    return AllocationFit(
        name=name,
        C=c,
        N_opt=n_opt,
        D_opt=d_opt,
        loss=loss,
        a=a,
        log_gn=gn,
        b=b,
        log_gd=gd,
        r2_n=_r2(logc, np.log(n_opt), a, gn),
        r2_d=_r2(logc, np.log(d_opt), b, gd),
        boot=boot,
        **provenance,
    )


def _require_sizes(table: FitTable, name: str) -> None:
    if np.unique(table.N).size < 2:
        raise FitInputError(
            f"{name} compares model sizes, but every row has N = {table.N[0]:.4g} ({table.rows(np.arange(len(table)))}); "
            "add runs of other sizes"
        )


def _smooth(loss: np.ndarray) -> np.ndarray:
    # Centred moving average over ~5% of the logged points: removes step-to-step noise, which would
    # otherwise bias the minimum over runs downwards, without the lag an exponential average adds.
    half = max(len(loss) // 40, 0)
    if half == 0:
        return loss
    c = np.concatenate([[0.0], np.cumsum(loss)])
    i = np.arange(len(loss))
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, len(loss))
    return (c[hi] - c[lo]) / (hi - lo)


def _envelope_inputs(table: FitTable, c_rtol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """(FLOP grid G, loss matrix (G, R) with inf where run R does not reach G, tokens (G, R), sizes (R,), curves?)."""
    if table.curves:
        runs = table.curves
        finals = np.sort([c.C[-1] for c in runs])
        if len(runs) < MIN_COVER or finals[-2] <= finals[0] * (1 + 1e-9):
            raise FitInputError(
                "approach 1 needs runs that end at different FLOP counts; all curves end at "
                f"C = {finals[0]:.4g}; add runs with other budgets"
            )
        # From the earliest finished run to the largest FLOP count two runs reach (the second-largest end):
        # before the first finish every curve is mid-schedule, and beyond it one run is left to compare.
        grid = np.geomspace(finals[0], finals[-2], ENVELOPE_POINTS)
        loss = np.full((len(grid), len(runs)), np.inf)
        tokens = np.zeros_like(loss)
        for r, curve in enumerate(runs):
            inside = (grid >= curve.C[0]) & (grid <= curve.C[-1])
            loss[inside, r] = np.interp(np.log(grid[inside]), np.log(curve.C), _smooth(curve.loss))
            tokens[:, r] = curve.D[-1] * grid / curve.C[-1]
        return grid, loss, tokens, np.array([c.N for c in runs]), True
    warnings.warn(
        "no training curves (metrics.jsonl) found: approach 1 uses each run's final point, so its envelope is "
        "the lowest-loss run of each isoFLOP group",
        FitWarning,
        stacklevel=3,
    )
    groups = group_by_c(table.C, c_rtol)
    singles = [g for g in groups if len(g) < MIN_COVER]
    if singles:
        warnings.warn(
            f"approach 1: {len(singles)} FLOP groups have a single run and are left out: "
            f"{table.rows(np.concatenate(singles))}",
            FitWarning,
            stacklevel=3,
        )
    grid = np.array([np.exp(np.mean(np.log(table.C[g]))) for g in groups])
    loss = np.full((len(groups), len(table)), np.inf)
    for i, g in enumerate(groups):
        loss[i, g] = table.loss[g]
    return grid, loss, np.broadcast_to(table.D, loss.shape), table.N, False


def _envelope(loss: np.ndarray, include: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Winning run per FLOP value and whether enough included runs reach it; include is (..., R)."""
    masked = np.where(include[..., None, :], loss, np.inf)
    reach = np.isfinite(masked).sum(-1)
    return np.argmin(masked, axis=-1), reach >= MIN_COVER


def _envelope_lines(
    loss: np.ndarray, tokens: np.ndarray, sizes: np.ndarray, grid: np.ndarray, include: np.ndarray
) -> np.ndarray:
    """(a, log G_N, b, log G_D) of the envelope of the included runs, one row per row of include (K, R)."""
    win, ok = _envelope(loss, include)
    log_c = np.broadcast_to(np.log(grid), win.shape)
    a, gn = _lines(log_c, np.log(sizes[win]), ok)
    b, gd = _lines(log_c, np.log(tokens[np.arange(len(grid)), win]), ok)
    return np.stack([a, gn, b, gd], 1)


def approach1(table: FitTable, n_boot: int, rng: np.random.Generator, c_rtol: float = 0.1) -> AllocationFit:
    """Approach 1: at each FLOP count the run with the lowest (smoothed) loss; power laws through its N and D."""
    _require_sizes(table, "approach 1")
    grid, loss, tokens, sizes, curves = _envelope_inputs(table, c_rtol)
    winner, valid = _envelope(loss, np.ones(loss.shape[1], bool))
    if valid.sum() < 2:
        raise FitInputError(
            "approach 1 needs at least 2 FLOP values where 2 or more runs can be compared; "
            "add runs so that budgets overlap (several sizes per budget)"
        )
    g = np.flatnonzero(valid)
    n_opt, d_opt = sizes[winner[g]], tokens[g, winner[g]]
    if np.unique(n_opt).size < 2:
        warnings.warn(
            f"approach 1: one model size (N = {n_opt[0]:.4g}) has the lowest loss at every FLOP count, so a = 0 "
            "by construction; the sizes do not bracket the optimum: add smaller and larger models",
            FitWarning,
            stacklevel=2,
        )
    boot = None
    if n_boot:
        # Resample whole runs (a curve is one unit: its points are not independent), in chunks that keep
        # the (resamples, FLOP values, runs) array small.
        include = resample_counts(rng, loss.shape[1], n_boot) > 0
        boot = np.concatenate(
            [_envelope_lines(loss, tokens, sizes, grid, include[i : i + 100]) for i in range(0, n_boot, 100)]
        )
    return _allocation_fit("approach1", grid[g], n_opt, d_opt, loss[g, winner[g]], boot, from_curves=curves)


def _parabola(u: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Least-squares (c0, c1, c2) of loss = c0 + c1 u + c2 u² for loss (..., n); needs 3 distinct u."""
    design = np.stack([np.ones_like(u), u, u * u], 1)
    return loss @ np.linalg.pinv(design).T


def _group(table: FitTable, rows: np.ndarray, c_rtol: float) -> IsoFlopGroup:
    c = float(np.exp(np.mean(np.log(table.C[rows]))))
    where = f"isoFLOP group C≈{c:.3g} ({table.rows(rows)})"
    if table.C[rows].max() > table.C[rows].min() * (1 + c_rtol) ** 2:
        warnings.warn(
            f"{where} spans C from {table.C[rows].min():.3g} to {table.C[rows].max():.3g}: is this an isoFLOP sweep? "
            "Set --c-rtol to the spread of C within one budget",
            FitWarning,
            stacklevel=4,
        )
    logn = np.log(table.N[rows])
    center = float(logn.mean())
    empty = IsoFlopGroup(c, rows, center, None, np.nan, np.nan, np.nan, False)
    n_sizes = np.unique(logn).size
    if n_sizes < PARABOLA_SIZES:
        warnings.warn(
            f"{where} has {n_sizes} model size(s); a parabola needs {PARABOLA_SIZES}, so approach 2 leaves it out",
            FitWarning,
            stacklevel=4,
        )
        return empty
    coef = _parabola(logn - center, table.loss[rows])
    if not coef[2] > 0:
        warnings.warn(
            f"{where}: its parabola opens downward (curvature {coef[2]:.3g}), so it has no minimum; approach 2 leaves "
            "it out. Add sizes on both sides of the best one",
            FitWarning,
            stacklevel=4,
        )
        return IsoFlopGroup(c, rows, center, coef, np.nan, np.nan, np.nan, False)
    u_star = -coef[1] / (2 * coef[2])
    n_opt = float(np.exp(center + u_star))
    if not logn.min() <= center + u_star <= logn.max():
        warnings.warn(
            f"{where}: the parabola's minimum N≈{n_opt:.3g} lies outside the sizes it sampled "
            f"({np.exp(logn.min()):.3g} to {np.exp(logn.max()):.3g}); it is extrapolated",
            FitWarning,
            stacklevel=4,
        )
    k = float(np.median(table.C[rows] / (table.N[rows] * table.D[rows])))  # FLOPs per parameter-token here
    return IsoFlopGroup(
        c, rows, center, coef, n_opt, c / (k * n_opt), float(coef[0] - coef[1] ** 2 / (4 * coef[2])), True
    )


def approach2(table: FitTable, n_boot: int, rng: np.random.Generator, c_rtol: float = 0.1) -> AllocationFit:
    """Approach 2: a parabola in log N per isoFLOP group; power laws through the minima."""
    _require_sizes(table, "approach 2")
    rows = group_by_c(table.C, c_rtol)
    if len(rows) < 2:
        raise FitInputError(
            f"approach 2 needs several compute budgets, but all rows fall in one isoFLOP group (C≈{np.median(table.C):.3g}: "
            f"{table.rows(np.arange(len(table)))}); add runs at other budgets (or lower --c-rtol)"
        )
    groups = tuple(_group(table, r, c_rtol) for r in rows)
    used = [g for g in groups if g.usable]
    if len(used) < 2:
        few = sum(g.coef is None for g in groups)
        raise FitInputError(
            f"approach 2 needs at least 2 isoFLOP groups with an upward parabola over {PARABOLA_SIZES}+ sizes; "
            f"{len(used)} of {len(groups)} qualify ({few} have fewer than {PARABOLA_SIZES} sizes, "
            f"{len(groups) - len(used) - few} open downward); add sizes to the budgets"
        )
    note = _undetermined(used) if n_boot else None
    boot = _bootstrap2(table, used, n_boot, rng) if n_boot and note is None else None
    return _allocation_fit(
        "approach2",
        np.array([g.C for g in used]),
        np.array([g.N_opt for g in used]),
        np.array([g.D_opt for g in used]),
        np.array([g.loss_min for g in used]),
        boot,
        groups=groups,
        ci_undetermined=note,
    )


def _spare(used: list[IsoFlopGroup]) -> tuple[int, int]:
    """Points to spare in the parabolas (all groups together) and in the power law through their minima."""
    return sum(len(g.rows) - 3 for g in used), len(used) - 2


def _undetermined(used: list[IsoFlopGroup]) -> str | None:
    """Why approach 2's intervals cannot be estimated from these groups, or None when they can."""
    within, line = _spare(used)
    if line < 1:
        warnings.warn(
            f"approach 2: the power law through {len(used)} isoFLOP minima has no point to spare, so nothing "
            "measures how far the minima stray from it: its intervals are undetermined (n/a); add 1 more budget",
            FitWarning,
            stacklevel=3,
        )
        return undetermined_reason(line)
    if within + line < MIN_SPARE:
        warnings.warn(
            f"approach 2: its parabolas leave {within} and its power law {line} point(s) to spare, too few to "
            f"estimate the noise: its intervals are undetermined (n/a); add {MIN_SPARE - within - line} more "
            "size(s) to a budget or more budgets",
            FitWarning,
            stacklevel=3,
        )
        return undetermined_reason(within + line)
    return None


def _pooled_residuals(table: FitTable, used: list[IsoFlopGroup]) -> np.ndarray:
    """Every used group's parabola residuals relative to the fit, scaled so their mean square estimates the noise.

    A 3-parameter fit leaves residuals smaller than the noise: their sum of squares has sum(n - 3)
    degrees of freedom. Pooling over groups lets a group with exactly 3 sizes (no residuals of its own)
    borrow the noise level of the others. Relative residuals, because loss noise scales with the loss,
    which is higher at small budgets.
    """
    resid = []
    for g in used:
        u = np.log(table.N[g.rows]) - g.center
        resid.append(table.loss[g.rows] / (g.coef[0] + g.coef[1] * u + g.coef[2] * u * u) - 1)
    pooled = np.concatenate(resid)
    within, _ = _spare(used)
    return pooled * np.sqrt(pooled.size / within) if within else pooled


def _lack_of_fit(logc: np.ndarray, log_n: np.ndarray, star: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(K, G) extra scatter of the minima about the power law, beyond what the parabola noise explains.

    The minima scatter about the fitted line by their estimation error (variance v_g, from the resamples)
    plus any departure from a power law (variance tau²). tau² is estimated by moments from the line's
    residual sum of squares, E[RSS] = sum (1 - h_g)(v_g + tau²) with h_g the leverage. It rests on G - 2
    degrees of freedom, so each resample draws its own tau² from a scaled inverse chi-square: with few
    budgets the slope's interval then widens like a Student t instead of trusting a noisy estimate.
    """
    n_groups = len(logc)
    slope, intercept = _lines(logc, log_n, np.ones_like(logc, bool))
    rss = float(np.sum((log_n - slope * logc - intercept) ** 2))
    dx = logc - logc.mean()
    leverage = 1 / n_groups + dx**2 / np.sum(dx**2)
    v = np.nanvar(star, axis=0)
    dof = n_groups - 2
    tau2 = max(0.0, (rss - float(np.sum((1 - leverage) * v))) / dof)
    draws = tau2 * dof / rng.chisquare(dof, size=(len(star), 1))
    return rng.normal(size=star.shape) * np.sqrt(draws)


def _bootstrap2(table: FitTable, used: list[IsoFlopGroup], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    # Residual bootstrap within each isoFLOP group, from residuals pooled over groups. The sizes of a
    # profile are a design, not a sample: resampling rows would often drop sizes and leave a barely
    # determined parabola, overstating the spread (intervals far wider than nominal in our coverage tests).
    # The pooled noise level rests on sum(n - 3) degrees of freedom; as for tau² in _lack_of_fit, each
    # resample scales it by a draw from its sampling distribution, so few spare sizes widen the interval.
    pooled = _pooled_residuals(table, used)
    within, _ = _spare(used)
    scale = np.sqrt(within / rng.chisquare(within, size=(n_boot, 1))) if within else np.ones((n_boot, 1))
    star = np.full((n_boot, len(used)), np.nan)
    for j, g in enumerate(used):
        u = np.log(table.N[g.rows]) - g.center
        fitted = g.coef[0] + g.coef[1] * u + g.coef[2] * u * u
        coef = _parabola(u, fitted * (1 + scale * pooled[rng.integers(0, pooled.size, (n_boot, len(u)))]))
        with np.errstate(invalid="ignore", divide="ignore"):
            star[:, j] = np.where(coef[:, 2] > 0, g.center - coef[:, 1] / (2 * coef[:, 2]), np.nan)
    logc = np.log([g.C for g in used])
    log_n = star + _lack_of_fit(logc, np.log([g.N_opt for g in used]), star, rng)
    log_d = np.log([g.D_opt * g.N_opt for g in used]) - log_n  # D_opt = C/(k N_opt): same C and k as the group
    logc = np.broadcast_to(logc, log_n.shape)
    ok = np.isfinite(log_n)
    a, gn = _lines(logc, np.where(ok, log_n, 0.0), ok)
    b, gd = _lines(logc, np.where(ok, log_d, 0.0), ok)
    return np.stack([a, gn, b, gd], 1)
