"""A degenerate fit prints no interval anywhere: the rules, fit.json, the report and the plot legends."""

from __future__ import annotations

import numpy as np
import pytest

from scalelab.scaling.fit import plots
from scalelab.scaling.fit.degenerate import R2_FLOOR, ZERO_ATOL, degenerate_reason, single_optimum_reason
from scalelab.scaling.fit.fit_json import FitSettings, run_fits
from scalelab.scaling.fit.report import format_report
from scalelab.scaling.fit.table import load_table
from tests.scaling.fit.synth import write_csv

HEALTHY = {"converged": True, "r2": 0.98, "alpha": 0.34, "A": 400.0, "ci": {"alpha": [0.3, 0.4], "A": [300.0, 500.0]}}


def test_a_healthy_fit_is_not_degenerate():
    assert degenerate_reason(HEALTHY) is None
    assert degenerate_reason(HEALTHY | {"converged": False, "r2": 0.0}) is None  # reports no numbers anyway


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"r2": 0.0}, "R² 0 is below"),
        ({"r2": R2_FLOOR / 2}, "below"),
        ({"r2": None}, "R² is undefined"),
        ({"r2": float("nan")}, "R² is undefined"),
        ({"alpha": 4.194e-29}, "alpha is numerically zero"),
        ({"alpha": -ZERO_ATOL / 2}, "alpha is numerically zero"),
        ({"ci": {"alpha": [0.34, 0.34], "A": [300.0, 500.0]}}, "interval of alpha has zero width"),
        ({"ci": {"alpha": [0.3, 0.4], "A": [400.0, 400.0 * (1 + 1e-12)]}}, "interval of A has zero width"),
        ({"ci": {"alpha": [0.0, 4.194e-29], "A": [300.0, 500.0]}}, "interval of alpha has zero width"),
    ],
)
def test_each_rule_marks_a_fit_degenerate(change, words):
    reason = degenerate_reason(HEALTHY | change)
    assert reason is not None and words in reason


def test_a_parameter_the_law_fixes_is_exempt():
    fixed_e = HEALTHY | {"E": 0.0, "ci": HEALTHY["ci"] | {"E": [0.0, 0.0]}}
    assert degenerate_reason(fixed_e) is not None
    assert degenerate_reason(fixed_e, fixed=("E",)) is None


def test_one_size_optimal_everywhere_is_degenerate():
    assert "one size (N = 1e+08)" in single_optimum_reason(np.array([1e8, 1e8, 1e8]))
    assert single_optimum_reason(np.array([1e8, 2e8])) is None


@pytest.fixture(scope="module")
def one_winner(tmp_path_factory):
    """3 budgets x 2 sizes where the smaller model wins every budget: approach 1's a is 0 by construction."""
    c = np.repeat([1e18, 1e19, 1e20], 2)
    n = np.tile([1e8, 4e8], 3)
    loss = np.array([3.0, 3.2, 2.6, 2.8, 2.3, 2.5])
    path = write_csv(tmp_path_factory.mktemp("degenerate") / "t.csv", {"N": n, "C": c, "loss": loss})
    table = load_table(path)
    with pytest.warns(UserWarning) as caught:
        fit = run_fits(table, FitSettings(approaches=("1",), bootstrap=50))
    # Most resamples fail here, but a fit with no intervals has none that could be "too narrow".
    assert not any("resamples gave no fit" in str(w.message) for w in caught)
    meta = {"input": str(path), "rows": 6, "columns": {"loss": "loss"}, "flops_per_param_token": 6.0}
    return {"meta": meta | {"bootstrap": 50, "ci_level": 0.95, "budget": None}, **fit}


def test_fit_json_has_null_intervals_and_the_reason(one_winner):
    obj = one_winner["approach1"]
    assert obj["converged"] is True and abs(obj["a"]) <= ZERO_ATOL
    assert "one size (N = 1e+08) is optimal at every budget" in obj["degenerate"]
    assert obj["ci"] and all(v is None for v in obj["ci"].values()) and "a" in obj["ci"]
    assert obj["ci_undetermined"] == f"degenerate fit: {obj['degenerate']}"


def test_report_and_legends_print_no_interval(one_winner):
    text = format_report(one_winner)
    a_line = next(line for line in text.splitlines() if line.strip().startswith("a "))
    assert "[" not in a_line and "no interval (degenerate fit)" in a_line
    assert "DEGENERATE: one size (N = 1e+08) is optimal at every budget" in text
    legend = plots._ci_text(one_winner["approach1"], "a")
    assert "[" not in legend and "degenerate" in legend


def test_a_fit_whose_optimum_moves_keeps_its_intervals(tmp_path):
    # The same path with the optimum moving up with the budget: no reason, and intervals are kept.
    c = np.repeat([1e18, 1e19, 1e20], 2)
    n = np.tile([1e8, 4e8], 3)
    loss = np.array([3.0, 3.2, 2.8, 2.6, 2.5, 2.3])
    table = load_table(write_csv(tmp_path / "t.csv", {"N": n, "C": c, "loss": loss}))
    with pytest.warns(UserWarning):
        obj = run_fits(table, FitSettings(approaches=("1",), bootstrap=50))["approach1"]
    assert obj["degenerate"] is None and obj["ci"]["a"] is not None and "ci_undetermined" not in obj
