"""Inputs the approaches cannot use get errors or warnings that name the rows; non-converged fits report no numbers."""

import dataclasses
import warnings

import numpy as np
import pytest

from scalelab.scaling.fit.fit_json import FitSettings, run_fits, summarize_law
from scalelab.scaling.fit.formulas import APPROACH3, KAPLAN, single_law
from scalelab.scaling.fit.isoflop import approach1, approach2
from scalelab.scaling.fit.lbfgs import Status
from scalelab.scaling.fit.parametric import fit_law, law_points
from scalelab.scaling.fit.report import format_report
from scalelab.scaling.fit.table import FitInputError, FitTable, FitWarning
from tests.scaling.fit.synth import K, chinchilla, isoflop_table

RNG = np.random.default_rng(0)


def _table(N, D, loss=None) -> FitTable:
    N, D = np.asarray(N, float), np.asarray(D, float)
    loss = chinchilla(N, D) if loss is None else np.asarray(loss, float)
    labels = tuple(f"line {i + 2}" for i in range(len(N)))
    return FitTable(N, D, K * N * D, loss, labels, "synthetic", {"loss": "loss"}, K)


def _iso(**kw) -> FitTable:
    d = isoflop_table(np.random.default_rng(1), np.geomspace(1e17, 1e19, 3), 5, 0.002, **kw)
    return _table(d["N"], d["D"], d["loss"])


@pytest.mark.parametrize(
    "fit", [lambda t: approach1(t, 0, RNG), lambda t: approach2(t, 0, RNG), lambda t: law_points(t, APPROACH3)]
)
def test_single_model_size_is_an_error_naming_rows(fit):
    t = _table([1e8] * 4, [1e9, 2e9, 4e9, 8e9])
    with pytest.raises(FitInputError, match=r"every row has N = 1e\+08 \(line 2, line 3, line 4, line 5\)"):
        fit(t)


def test_single_token_count_is_an_error_for_two_variable_laws():
    with pytest.raises(FitInputError, match="kaplan needs several values of D"):
        law_points(_table([1e7, 1e8, 1e9], [1e9] * 3), KAPLAN)


def test_single_budget_is_an_error_for_approach2():
    N = np.array([1e7, 3e7, 1e8, 3e8])
    with pytest.raises(
        FitInputError, match=r"all rows fall in one isoFLOP group \(C≈6e\+18: line 2, line 3, line 4, line 5\)"
    ):
        approach2(_table(N, 1e18 / N), 0, RNG)


def test_fewer_points_than_parameters():
    with pytest.raises(FitInputError, match=r"approach3 has 5 parameters but only 4 rows \(line 2, .*line 5\)"):
        law_points(_table([1e7, 1e8, 1e9, 1e7], [1e9, 1e10, 1e11, 1e11]), APPROACH3)
    with pytest.raises(FitInputError, match="L_N has 3 parameters but only 2 model sizes"):
        law_points(_table([1e7, 1e8, 1e8], [1e9, 1e9, 2e9]), single_law("N"))
    with pytest.warns(
        FitWarning, match="approach3 has 5 parameters and only 6 rows, 1 to spare: its intervals are undetermined"
    ):
        law_points(_table([1e7, 1e8, 1e9, 1e7, 1e8, 1e9], [1e9, 1e10, 1e11, 1e11, 1e9, 1e10]), APPROACH3)


def test_isoflop_group_with_too_few_sizes_is_named_and_left_out():
    t = _iso()
    keep = np.r_[0:10, 10, 11]  # the third budget keeps 2 of its 5 sizes
    t = _table(t.N[keep], t.D[keep], t.loss[keep])
    with pytest.warns(
        FitWarning, match=r"isoFLOP group C≈1e\+19 \(line 12, line 13\) has 2 model size\(s\); a parabola needs 3"
    ):
        fit = approach2(t, 0, RNG)
    assert [g.usable for g in fit.groups] == [True, True, False] and fit.n_points == 2


def test_downward_parabola_is_named_and_left_out():
    t = _iso()
    loss = t.loss.copy()
    loss[10:15] = 4.0 - (np.log(t.N[10:15]) - np.log(t.N[12])) ** 2  # the third profile peaks in the middle
    with pytest.warns(FitWarning, match=r"isoFLOP group C≈1e\+19 \(line 12, .*line 16\): its parabola opens downward"):
        fit = approach2(_table(t.N, t.D, loss), 0, RNG)
    assert [g.usable for g in fit.groups] == [True, True, False]


def test_too_few_usable_groups_is_an_error():
    t = _iso()
    keep = np.r_[0:5, 5, 6, 10, 11]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        with pytest.raises(FitInputError, match=r"at least 2 isoFLOP groups .* 1 of 3 qualify"):
            approach2(_table(t.N[keep], t.D[keep], t.loss[keep]), 0, RNG)


def test_approach1_without_curves_warns_and_uses_final_points():
    t = _iso()
    with pytest.warns(FitWarning, match="no training curves .* each run's final point"):
        fit = approach1(t, 0, RNG)
    assert not fit.from_curves and fit.n_points == 3
    # The envelope is the lowest-loss run of each budget.
    for c, n in zip(fit.C, fit.N_opt, strict=True):
        group = np.isclose(t.C, c, rtol=0.01)
        assert n == t.N[group][np.argmin(t.loss[group])]


def test_all_approaches_lists_the_ones_it_cannot_fit():
    t = _table(np.geomspace(1e7, 1e9, 6), np.full(6, 1e10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        result = run_fits(t, FitSettings(approaches=("2", "3", "single"), bootstrap=0))
    assert set(result["skipped"]) == {"approach2", "approach3", "L_D", "L_D_E0"}
    assert "every row has D = 1e+10" in result["skipped"]["approach3"]
    assert result["L_N"]["converged"]


def test_a_fit_that_did_not_converge_reports_no_numbers():
    t = _table(np.geomspace(1e7, 1e9, 8), np.geomspace(1e9, 1e11, 8)[::-1])
    fit = fit_law(single_law("N"), law_points(t, single_law("N")), grid={"e": (0.0,), "a": (5.0,), "alpha": (0.5,)})
    stuck = dataclasses.replace(fit, status=Status.MAX_EVALS)
    obj = summarize_law(stuck, None, t, FitSettings(budget=1e21))
    assert obj["converged"] is False and obj["status"] == "max_evals"
    assert obj["E"] is None and obj["A"] is None and obj["alpha"] is None and obj["ci"] is None
    meta = {
        "input": "t.csv",
        "rows": 8,
        "columns": {"loss": "loss"},
        "flops_per_param_token": K,
        "bootstrap": 0,
        "budget": None,
    }
    text = format_report({"meta": meta, "L_N": obj})
    block = text.split("\n\n")[1].splitlines()
    assert block == ["L_N: L = E + A/N^alpha", "  NOT CONVERGED (max_evals); no parameters are reported"]


def test_a_loss_that_rises_with_model_size_is_fitted_but_warned_about():
    N = np.geomspace(1e7, 1e9, 6)
    t = _table(N, np.full(6, 1e10), 2.0 * (N / 1e7) ** 0.05)  # larger models did worse: undertrained, say
    with pytest.warns(FitWarning) as caught:
        result = run_fits(t, FitSettings(approaches=("single", "kaplan"), bootstrap=0))  # two: skips listed
    assert result["L_N_E0"]["alpha"] == pytest.approx(-0.05, rel=1e-3)
    rising = [str(w.message) for w in caught if "is negative" in str(w.message)]
    assert any(m.startswith("L_N_E0: alpha = -0.05 is negative, so the fitted loss rises with N") for m in rising)
    assert not any(m.startswith("L_D") for m in rising)  # L_D was not fitted (one D): nothing to say about it
