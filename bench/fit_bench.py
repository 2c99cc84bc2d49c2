"""Approach-3 fitting speed: the JAX grid fit and bootstrap against a plain scipy L-BFGS-B loop, same run.

Both minimise the same objective (the normalised Huber loss of log residuals in scaling.laws) from the
same 4,500 Chinchilla grid starts on the same 250-point table, then refit the same 1,000 bootstrap
resamples from the same start points. The JAX time excludes compilation (reported separately, it is
paid once per process). Run: .venv/bin/python -m scalelab.bench.fit_bench   (writes bench/results/fit.json)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

# scipy's L-BFGS-B calls BLAS on 5-element vectors; a multithreaded OpenBLAS makes each call far slower
# (about 20x per fit on this 2-core machine), so the baseline gets one BLAS thread, its best setting.
# This must happen before numpy loads; JAX does not use OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from scalelab.bench.report import RESULTS_DIR, write_json

N_ROWS = 250
# `scalelab bench --quick`: the scipy baseline on every 20th start and resample only, its times scaled by 20
# (read by bench/suite.py without importing this).
QUICK_ARGS = ["--scipy-every", "20"]
RESAMPLES = 1000
NOISE = 0.02
SEED = 0
TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. 2022
# Same optimum: objectives within this relative gap, exponents within this absolute gap.
F_RTOL = 1e-4
EXPONENT_ATOL = 2e-3


def make_table(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """log-features (2, n) and log losses of N_ROWS runs drawn from the Chinchilla law with log-normal noise."""
    logn = rng.uniform(np.log(1e7), np.log(1e10), N_ROWS)
    logd = rng.uniform(np.log(1e8), np.log(1e11), N_ROWS)
    loss = TRUTH["E"] + TRUTH["A"] * np.exp(-TRUTH["alpha"] * logn) + TRUTH["B"] * np.exp(-TRUTH["beta"] * logd)
    return np.stack([logn, logd]), np.log(loss) + rng.normal(0, NOISE, N_ROWS)


def scipy_objective(
    theta: np.ndarray, w: np.ndarray, x: np.ndarray, y: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """The same objective as scaling.laws (approach 3) in float64 numpy, with its analytic gradient."""
    a, b, e, alpha, beta = theta
    t0, t1 = a - alpha * x[0], b - beta * x[1]
    m = np.maximum(np.maximum(t0, t1), e)
    e0, e1, e2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
    s = e0 + e1 + e2
    r = m + np.log(s) - y
    absr = np.abs(r)
    scale = 1.0 / (w.sum() * delta)
    value = np.sum(w * np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))) * scale
    psi = w * np.clip(r, -delta, delta) * scale / s
    g0, g1 = psi * e0, psi * e1
    return value, np.array([g0.sum(), g1.sum(), (psi * e2).sum(), -(g0 * x[0]).sum(), -(g1 * x[1]).sum()])


def scipy_loop(starts: np.ndarray, weights: np.ndarray, x: np.ndarray, y: np.ndarray, delta: float) -> np.ndarray:
    """scipy L-BFGS-B (default settings) from each start with its weights; rows of (f, theta...)."""
    from scipy.optimize import minimize

    out = np.empty((len(starts), 6))
    for i, (start, w) in enumerate(zip(starts, weights, strict=True)):
        res = minimize(scipy_objective, start, args=(w, x, y, delta), jac=True, method="L-BFGS-B")
        out[i] = [res.fun, *res.x]
    return out


class Clock:
    """Wall and process CPU time since the previous lap."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, scale: float = 1.0) -> tuple[float, float]:
        """(wall, cpu) seconds since the last lap, times scale (to extrapolate a sampled loop)."""
        wall, cpu = time.perf_counter(), time.process_time()
        out = ((wall - self.wall) * scale, (cpu - self.cpu) * scale)
        self.wall, self.cpu = wall, cpu
        return out


def main() -> None:
    """Time both, check they agree, print the ratio and write bench/results/fit.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fit.json", help="results JSON")
    parser.add_argument(
        "--scipy-every",
        type=int,
        default=1,
        metavar="K",
        help="run scipy on every K-th start and resample only and scale its times by K (default 1: all of them)",
    )
    args = parser.parse_args()
    every = args.scipy_every

    import jax

    from scalelab.scaling.fit.bootstrap import bootstrap_law, bootstrap_starts, resample_counts
    from scalelab.scaling.fit.formulas import APPROACH3, HUBER_DELTA
    from scalelab.scaling.fit.parametric import Points, fit_law

    load_start = os.getloadavg()[0]
    x, y = make_table(np.random.default_rng(SEED))
    points = Points(x, y, tuple(str(i) for i in range(N_ROWS)))

    clock = Clock()
    fit_law(APPROACH3, points)  # compiles the loop (shared by the bootstrap)
    compile_s = clock.lap()
    fit = fit_law(APPROACH3, points)
    grid_s = clock.lap()
    boot = bootstrap_law(fit, RESAMPLES, np.random.default_rng(SEED + 1))
    boot_s = clock.lap()
    print(f"jax: grid {grid_s[0]:.2f} s + bootstrap {boot_s[0]:.2f} s (compile once: {compile_s[0]:.1f} s)", flush=True)

    grid = APPROACH3.grid()
    sp_grid = scipy_loop(grid[::every], np.ones((len(grid[::every]), N_ROWS)), x, y, HUBER_DELTA)
    sp_grid_s = clock.lap(every)
    starts = bootstrap_starts(fit, 4)
    counts = resample_counts(np.random.default_rng(SEED + 1), N_ROWS, RESAMPLES)[::every]  # the resamples JAX refitted
    sp_boot = scipy_loop(np.tile(starts, (len(counts), 1)), np.repeat(counts, len(starts), 0), x, y, HUBER_DELTA)
    sp_boot_s = clock.lap(every)
    print(f"scipy: grid {sp_grid_s[0]:.2f} s + bootstrap {sp_boot_s[0]:.2f} s", flush=True)

    best = sp_grid[np.argmin(sp_grid[:, 0])]
    jax_f64 = scipy_objective(fit.theta, np.ones(N_ROWS), x, y, HUBER_DELTA)[0]
    f_gap = abs(jax_f64 - best[0]) / best[0]
    exp_gap = float(np.max(np.abs(fit.theta[3:] - best[4:])))
    sp_boot_best = sp_boot.reshape(len(counts), len(starts), 6)
    sp_boot_theta = sp_boot_best[np.arange(len(counts)), np.argmin(sp_boot_best[:, :, 0], 1), 1:]
    boot_gap = float(np.nanmedian(np.abs(boot[::every, 3:] - sp_boot_theta[:, 3:])))
    same = f_gap < F_RTOL and exp_gap < EXPONENT_ATOL
    jax_total = [a + b for a, b in zip(grid_s, boot_s, strict=True)]
    sp_total = [a + b for a, b in zip(sp_grid_s, sp_boot_s, strict=True)]
    result = {
        "table_rows": N_ROWS,
        "grid_starts": len(grid),
        "bootstrap_resamples": RESAMPLES,
        "bootstrap_starts_per_resample": len(starts),
        "scipy_every": every,
        # Wall-clock seconds; *_cpu_s is process CPU time (JAX uses both cores, the scipy loop one).
        "jax_s": {"grid": grid_s[0], "bootstrap": boot_s[0], "total": jax_total[0], "compile_once": compile_s[0]},
        "scipy_s": {"grid": sp_grid_s[0], "bootstrap": sp_boot_s[0], "total": sp_total[0]},
        "jax_cpu_s": {"grid": grid_s[1], "bootstrap": boot_s[1], "total": jax_total[1], "compile_once": compile_s[1]},
        "scipy_cpu_s": {"grid": sp_grid_s[1], "bootstrap": sp_boot_s[1], "total": sp_total[1]},
        "speedup": sp_total[0] / jax_total[0],
        "speedup_cpu_time": sp_total[1] / jax_total[1],
        "speedup_including_compile": sp_total[0] / (jax_total[0] + compile_s[0]),
        "same_optimum": same,
        "objective_relative_gap": f_gap,
        "exponent_max_abs_gap": exp_gap,
        "bootstrap_exponent_median_abs_gap": boot_gap,
        "jax_params": {k: float(v) for k, v in APPROACH3.to_public(fit.theta).items()},
        "scipy_params": {k: float(v) for k, v in APPROACH3.to_public(best[1:]).items()},
        "starts_at_best": fit.n_reached,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min_start_end": [load_start, os.getloadavg()[0]],
            "jax": jax.__version__,
            "openblas_threads": os.environ["OPENBLAS_NUM_THREADS"],
            "python": platform.python_version(),
        },
    }
    write_json(args.out, result)
    print(
        f"speedup {result['speedup']:.1f}x wall (scipy {sp_total[0]:.1f} s / jax {jax_total[0]:.2f} s), "
        f"{result['speedup_cpu_time']:.1f}x CPU time, {result['speedup_including_compile']:.1f}x wall counting compilation"
    )
    print(
        f"same optimum: {same} (objective gap {f_gap:.1e}, exponent gap {exp_gap:.1e}; "
        f"bootstrap exponents differ by {boot_gap:.1e} median)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
