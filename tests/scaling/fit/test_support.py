"""The fits a plan supports, as the fitters judge them: the plan's verdict and the fit's outcome agree."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from scalelab.scaling.fit.fit_json import FitSettings, run_fits
from scalelab.scaling.fit.support import fit_support, format_support
from scalelab.scaling.fit.table import FitWarning, load_table
from tests.scaling.fit.synth import TRUTH, K, chinchilla, write_csv


def _points(budgets: list[float], sizes: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    C = np.repeat(budgets, len(sizes)).astype(float)
    N = np.tile(sizes, len(budgets)).astype(float) * np.sqrt(C / C[0])  # sizes move up with the budget
    return N, C / (K * N), C


TWO_PER_BUDGET = _points([1e18, 1e19, 1e20, 1e21, 1e22], [1e8, 4e8])
FOUR_BY_FOUR = _points([1e18, 1e19, 1e20, 1e21], [2.5e7, 1e8, 4e8, 1.6e9])


def test_two_sizes_per_budget_cannot_support_approach_2_and_says_why():
    verdicts = {v.name: v for v in fit_support(*TWO_PER_BUDGET)}
    assert verdicts["approach2"].verdict == "no"
    assert "0 of 5 qualify (5 have fewer than 3 sizes" in verdicts["approach2"].reason
    assert verdicts["approach1"].verdict == "yes"
    text = format_support(list(verdicts.values()))
    assert "  approach 2: no (approach 2 needs at least 2 isoFLOP groups" in text


def test_a_full_isoflop_grid_supports_every_approach_with_intervals():
    verdicts = {v.name: v.verdict for v in fit_support(*FOUR_BY_FOUR)}
    for name in ("approach1", "approach2", "approach3", "kaplan", "L_N", "L_D"):
        assert verdicts[name] == "yes", name
    assert verdicts["L_C"] == "no intervals"  # 4 budgets on the frontier for 3 parameters: 1 to spare


@pytest.mark.parametrize("points", [TWO_PER_BUDGET, FOUR_BY_FOUR], ids=["2-per-budget", "4x4"])
def test_the_plan_verdict_is_what_fit_does(points, tmp_path):
    N, D, C = points
    loss = chinchilla(N, D, TRUTH) * np.exp(np.random.default_rng(0).normal(0, 0.01, len(N)))
    table = load_table(write_csv(tmp_path / "t.csv", {"N": N, "D": D, "C": C, "loss": loss}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = run_fits(table, FitSettings(bootstrap=20, boot_starts=1))
    for v in fit_support(N, D, C):
        if v.verdict == "no":
            assert v.name in fit["skipped"], v.name
        else:
            obj = fit[v.name]
            undetermined = obj.get("ci_undetermined") if not obj.get("degenerate") else None
            assert (v.verdict == "no intervals") == (undetermined is not None), (v.name, v, obj.get("ci_undetermined"))
