"""Bootstrap intervals cover the truth at about their nominal rate over repeated synthetic draws."""

import numpy as np
import pytest

from scaling.approaches import approach2
from scaling.bootstrap import bootstrap_law, percentile_interval, resample_counts
from scaling.lawfit import Points, fit_law
from scaling.laws import single_law
from scaling.table import FitTable
from tests.scaling.synth import TRUTH, K, isoflop_table

A_TRUE = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])


def _table(d: dict) -> FitTable:
    n = len(d["N"])
    labels = tuple(f"line {i + 2}" for i in range(n))
    return FitTable(d["N"], d["D"], d["C"], d["loss"], labels, "synthetic", {}, K)


def test_resample_counts_and_percentile_interval():
    counts = resample_counts(np.random.default_rng(0), 7, 500)
    assert counts.shape == (500, 7) and np.all(counts.sum(1) == 7)
    assert counts.mean() == pytest.approx(1.0, abs=0.05)
    samples = np.concatenate([np.arange(1000.0), [np.nan, np.inf]])
    lo, hi = percentile_interval(samples, 0.9)
    assert lo == pytest.approx(49.95) and hi == pytest.approx(949.05)
    assert percentile_interval(np.array([np.nan]), 0.9) is None


def test_approach2_intervals_cover_at_nominal_rate():
    # 200 sweeps of 5 budgets x 9 sizes (within 4x of the optimum, where the parabola fits) at 1% noise.
    hits = 0
    for rep in range(200):
        rng = np.random.default_rng(rep)
        fit = approach2(_table(isoflop_table(rng, np.geomspace(1e17, 1e20, 5), 9, 0.01, spread=4.0)), 200, rng)
        lo, hi = percentile_interval(fit.boot[:, 0], 0.9)
        hits += lo <= A_TRUE <= hi
    # Nominal 90%; the binomial sd over 200 draws is 2.1%, so this band is about ±2.5 sd.
    assert 0.84 <= hits / 200 <= 0.95


def test_law_intervals_cover_and_match_the_sampling_spread():
    law = single_law("N")
    truth = {"E": 1.69, "A": 406.4, "alpha": 0.34}
    n_pts, reps = 40, 40
    N = np.geomspace(1e6, 1e10, n_pts)
    estimates, intervals = [], []
    for rep in range(reps):
        rng = np.random.default_rng(1000 + rep)
        y = np.log(truth["E"] + truth["A"] * N ** -truth["alpha"]) + rng.normal(0, 0.02, n_pts)
        fit = fit_law(law, Points(np.log(N)[None], y, tuple(map(str, range(n_pts)))))
        boot = law.to_public(bootstrap_law(fit, 100, rng))
        estimates.append(law.to_public(fit.theta)["alpha"])
        intervals.append([percentile_interval(boot[k], 0.9) for k in ("alpha", "E")])
    iv = np.array(intervals)  # (reps, 2 params, 2 ends)
    for j, name in enumerate(("alpha", "E")):
        cover = np.mean((iv[:, j, 0] <= truth[name]) & (truth[name] <= iv[:, j, 1]))
        assert cover >= 0.8, f"{name}: 90% intervals covered the truth in only {cover:.0%} of {reps} draws"
    # Intervals as wide as the real spread of the estimate: median width vs the 90% range of a normal.
    width = np.median(iv[:, 0, 1] - iv[:, 0, 0])
    assert 0.6 < width / (2 * 1.645 * np.std(estimates)) < 1.7
