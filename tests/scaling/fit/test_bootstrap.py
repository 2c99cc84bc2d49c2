"""Bootstrap intervals cover the truth at about their nominal rate over repeated synthetic draws."""

import numpy as np
import pytest

from scalelab.scaling.fit.bootstrap import bootstrap_law, percentile_interval, resample_counts
from scalelab.scaling.fit.formulas import single_law
from scalelab.scaling.fit.isoflop import approach2
from scalelab.scaling.fit.parametric import Points, fit_law
from scalelab.scaling.fit.table import FitTable, FitWarning
from tests.scaling.fit.synth import TRUTH, K, isoflop_table

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


@pytest.mark.parametrize(
    ("budgets", "sizes"),
    # 5 x 9: a parabola per budget with sizes to spare. 4 x 4 (the demo's shape): one spare size per
    # parabola; resampling each group's own 4 residuals covered only 77%, pooled ones cover near nominal.
    [(5, 9), (4, 4)],
)
def test_approach2_intervals_cover_at_nominal_rate(budgets, sizes):
    # 200 sweeps (sizes within 4x of the optimum, where the parabola fits) at 1% noise.
    hits = 0
    for rep in range(200):
        rng = np.random.default_rng(rep)
        d = isoflop_table(rng, np.geomspace(1e17, 1e20, budgets), sizes, 0.01, spread=4.0)
        fit = approach2(_table(d), 200, rng)
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


def test_three_sizes_per_budget_leave_approach2_intervals_undetermined():
    # 3 budgets x 3 sizes: each parabola passes through its points and the line has 1 point to spare.
    rng = np.random.default_rng(0)
    with pytest.warns(FitWarning, match=r"approach 2: .* undetermined \(n/a\); add 1 more size"):
        fit = approach2(_table(isoflop_table(rng, np.geomspace(1e17, 1e19, 3), 3, 0.01)), 200, rng)
    assert fit.boot is None and fit.ci_undetermined == "only 1 point to spare, 2 needed"
    with pytest.warns(FitWarning, match="power law through 2 isoFLOP minima has no point to spare"):
        two = approach2(_table(isoflop_table(rng, np.geomspace(1e17, 1e19, 2), 5, 0.01)), 200, rng)
    assert two.boot is None and two.ci_undetermined == "no points to spare"


def test_approach2_intervals_widen_when_minima_stray_from_the_power_law():
    rng = np.random.default_rng(4)
    d = isoflop_table(rng, np.geomspace(1e17, 1e20, 5), 7, 0.002, spread=4.0)
    straight = approach2(_table(d), 400, np.random.default_rng(0))
    bent = dict(d, N=d["N"] * np.repeat([1.0, 1.6, 0.7, 1.5, 0.8], 7))  # move whole profiles off the line
    bent["D"] = bent["C"] / (K * bent["N"])
    crooked = approach2(_table(bent), 400, np.random.default_rng(0))

    def width(f):
        lo, hi = percentile_interval(f.boot[:, 0], 0.9)
        return hi - lo

    assert width(crooked) > 3 * width(straight)


def test_resamples_with_fewer_distinct_rows_than_parameters_are_redrawn():
    counts = resample_counts(np.random.default_rng(0), 5, 2000, min_distinct=4)
    assert ((counts > 0).sum(1) >= 4).all() and (counts.sum(1) == 5).all()


def test_a_law_with_no_points_to_spare_has_null_intervals(tmp_path):
    from scalelab.scaling.fit.fit_json import FitSettings, run_fits
    from scalelab.scaling.fit.table import load_table
    from tests.scaling.fit.synth import write_csv

    N = np.repeat(np.geomspace(1e7, 1e9, 3), 3)
    D = np.tile(np.geomspace(1e9, 1e11, 3), 3)
    loss = 1.69 + 406.4 * N**-0.34 + 410.7 * D**-0.28
    table = load_table(write_csv(tmp_path / "t.csv", {"N": N, "D": D, "loss": loss}))
    with pytest.warns(FitWarning, match="L_N has 3 parameters and only 3 model sizes, 0 to spare") as warned:
        fit = run_fits(table, FitSettings(approaches=("single",), bootstrap=50))
    assert "L_N_E0 has 2 parameters and only 3 model sizes, 1 to spare" in "\n".join(str(w.message) for w in warned)
    assert "add 1 more model size for intervals" in "\n".join(str(w.message) for w in warned)  # one: singular
    assert fit["L_N"]["ci"] == {"E": None, "A": None, "alpha": None}
    assert fit["L_N"]["ci_undetermined"] == "no points to spare"
    assert fit["L_N_E0"]["ci_undetermined"] == "only 1 point to spare, 2 needed"
