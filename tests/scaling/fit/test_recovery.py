"""Every approach recovers known parameters from synthetic noisy data, and the grid beats a single start.

Tolerances are stated per test; they are several times the spread of the estimates over seeds at the
given noise level (checked when writing the tests), so a correct fit passes with margin and a biased one fails.
"""

import numpy as np
import pytest

from scalelab.scaling.fit.formulas import APPROACH3, KAPLAN, single_law
from scalelab.scaling.fit.isoflop import approach1, approach2
from scalelab.scaling.fit.parametric import fit_law, law_points
from scalelab.scaling.fit.table import load_table
from tests.scaling.fit.synth import TRUTH, isoflop_table, random_table, write_csv, write_sweep

A_TRUE = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])  # N_opt ∝ C^a for the Chinchilla law
KAPLAN_TRUTH = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}  # Kaplan et al. 2020


@pytest.fixture(scope="module")
def approach3_fit(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = write_csv(tmp_path_factory.mktemp("a3") / "t.csv", random_table(rng, 64, noise=0.005))
    table = load_table(path)
    return fit_law(APPROACH3, law_points(table, APPROACH3)), table


def test_approach3_recovers_chinchilla_law(approach3_fit):
    fit, _ = approach3_fit
    p = APPROACH3.to_public(fit.theta)
    assert fit.converged and fit.n_starts == 4500
    # 64 runs, 0.5% noise: exponents to ±0.03, E to 3%, A and B (weakly identified) within a factor 1.5.
    assert p["alpha"] == pytest.approx(TRUTH["alpha"], abs=0.03)
    assert p["beta"] == pytest.approx(TRUTH["beta"], abs=0.03)
    assert p["E"] == pytest.approx(TRUTH["E"], rel=0.03)
    for k in ("A", "B"):
        assert abs(np.log(p[k] / TRUTH[k])) < np.log(1.5)
    assert fit.r2 > 0.99
    assert np.sqrt(np.mean(fit.residuals**2)) < 0.01  # residual RMS near the 0.005 noise


def test_grid_finds_the_optimum_a_single_start_misses(approach3_fit):
    fit, table = approach3_fit
    # A grid point on its own (a=b=5, e=-0.5, alpha=beta=0) converges to a local optimum with wrong exponents.
    start = {"a": (5.0,), "b": (5.0,), "e": (-0.5,), "alpha": (0.0,), "beta": (0.0,)}
    lone = fit_law(APPROACH3, law_points(table, APPROACH3), grid=start)
    assert lone.n_starts == 1 and lone.converged
    assert lone.objective > 2 * fit.objective
    p = APPROACH3.to_public(lone.theta)
    assert max(abs(p["alpha"] - TRUTH["alpha"]), abs(p["beta"] - TRUTH["beta"])) > 0.2
    # The grid's best is the global optimum: it recovers the truth (previous test) and several starts reach it.
    assert fit.objective == pytest.approx(fit.solutions.f[fit.solutions.converged].min())
    assert 10 < fit.n_reached < fit.n_starts


def test_kaplan_recovers_kaplan_law(tmp_path):
    rng = np.random.default_rng(1)
    t = random_table(rng, 64, noise=0.0)
    k = KAPLAN_TRUTH
    t["loss"] = ((k["N_c"] / t["N"]) ** (k["alpha_N"] / k["alpha_D"]) + k["D_c"] / t["D"]) ** k["alpha_D"]
    t["loss"] *= np.exp(rng.normal(0, 0.005, 64))
    fit = fit_law(KAPLAN, law_points(load_table(write_csv(tmp_path / "k.csv", t)), KAPLAN))
    p = KAPLAN.to_public(fit.theta)
    assert fit.converged
    # Exponents to ±0.005; N_c and D_c sit far outside the data (logs ~31) and are known within a factor 3.
    assert p["alpha_N"] == pytest.approx(k["alpha_N"], abs=0.005)
    assert p["alpha_D"] == pytest.approx(k["alpha_D"], abs=0.005)
    for name in ("N_c", "D_c"):
        assert abs(np.log(p[name] / k[name])) < np.log(3)


@pytest.mark.parametrize("variable", ["N", "D", "C"])
@pytest.mark.parametrize("irreducible", [True, False])
def test_single_variable_laws_recover(tmp_path, variable, irreducible):
    rng = np.random.default_rng(2)
    x = np.geomspace(1e6, 1e12, 40)
    E, A, alpha = (1.7 if irreducible else 0.0), 300.0, 0.3
    loss = (E + A * x**-alpha) * np.exp(rng.normal(0, 0.005, 40))
    others = {"N": 1e9, "D": 1e11}
    cols = {v: (x if v == variable else np.full(40, others[v])) for v in ("N", "D") if v in others}
    if variable == "C":
        cols = {"N": np.full(40, 1e9), "C": x}
    law = single_law(variable, irreducible)
    fit = fit_law(law, law_points(load_table(write_csv(tmp_path / "s.csv", {**cols, "loss": loss})), law))
    p = law.to_public(fit.theta)
    assert fit.converged
    # 40 points over 6 decades at 0.5% noise: alpha to ±0.02, E to 3% (exactly 0 for E0), A within a factor 1.5.
    assert p["alpha"] == pytest.approx(alpha, abs=0.02)
    assert p["E"] == pytest.approx(E, rel=0.03, abs=0.0)
    assert abs(np.log(p["A"] / A)) < np.log(1.5)


def test_approach2_recovers_allocation_exponents(tmp_path):
    rng = np.random.default_rng(3)
    table = load_table(write_csv(tmp_path / "iso.csv", isoflop_table(rng, np.geomspace(1e17, 1e20, 5), 9, 0.005)))
    fit = approach2(table, 0, rng)
    # Five budgets of nine sizes at 0.5% noise: a and b to ±0.02 (spread over seeds ~0.006).
    assert fit.a == pytest.approx(A_TRUE, abs=0.02)
    assert fit.b == pytest.approx(1 - A_TRUE, abs=0.02)
    assert fit.r2_n > 0.98 and len(fit.groups) == 5 and all(g.usable for g in fit.groups)


def test_approach1_recovers_allocation_exponents_from_curves(tmp_path):
    rng = np.random.default_rng(4)
    # Twelve sizes, each trained far past its optimum (D = 200 N), so the envelope is the law's own N_opt(C).
    N = np.geomspace(3e7, 3e9, 12)
    D = 200 * N
    sweep = {"N": N, "D": D, "C": 6 * N * D, "loss": np.ones(12)}
    table = load_table(write_sweep(tmp_path / "sweep", sweep, rng, steps=60))
    fit = approach1(table, 0, rng)
    assert fit.from_curves and fit.n_points > 50
    # Sizes are a factor 1.5 apart, so the envelope is a staircase: a and b to ±0.03.
    assert fit.a == pytest.approx(A_TRUE, abs=0.03)
    assert fit.b == pytest.approx(1 - A_TRUE, abs=0.03)
