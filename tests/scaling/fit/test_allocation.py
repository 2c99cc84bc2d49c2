"""Closed-form compute-optimal allocations agree with brute-force minimisation along the FLOP constraint."""

import numpy as np
import pytest

from scalelab.scaling.fit import allocation
from tests.scaling.fit.synth import TRUTH, K, chinchilla, true_n_opt

KAPLAN = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}


def _brute_force(loss_of, C: float) -> tuple[float, float]:
    n = np.geomspace(1e3, 1e16, 400_001)
    loss = loss_of(n, C / (K * n))
    i = int(np.argmin(loss))
    return n[i], loss[i]


@pytest.mark.parametrize("C", [1e18, 1e21, 1e24])
def test_chinchilla_optimum_matches_brute_force(C):
    n, d, loss = allocation.chinchilla_optimum(*(TRUTH[k] for k in ("E", "A", "B", "alpha", "beta")), C, K)
    n_bf, loss_bf = _brute_force(chinchilla, C)
    assert n == pytest.approx(n_bf, rel=1e-3)
    assert K * n * d == pytest.approx(C)
    assert loss == pytest.approx(loss_bf, rel=1e-9)
    assert n == pytest.approx(true_n_opt(C))


@pytest.mark.parametrize("C", [1e18, 1e21, 1e24])
def test_kaplan_optimum_matches_brute_force(C):
    k = KAPLAN

    def kaplan(N, D):
        return ((k["N_c"] / N) ** (k["alpha_N"] / k["alpha_D"]) + k["D_c"] / D) ** k["alpha_D"]

    n, d, loss = allocation.kaplan_optimum(*k.values(), C, K)
    n_bf, loss_bf = _brute_force(kaplan, C)
    assert n == pytest.approx(n_bf, rel=1e-3)
    assert K * n * d == pytest.approx(C)
    assert loss == pytest.approx(loss_bf, rel=1e-9)


def test_exponents_are_the_slopes_of_the_optima():
    c = np.array([1e19, 1e22])
    n, d, _ = allocation.chinchilla_optimum(*(TRUTH[k] for k in ("E", "A", "B", "alpha", "beta")), c, K)
    a, b = allocation.chinchilla_exponents(TRUTH["alpha"], TRUTH["beta"])
    assert np.diff(np.log(n))[0] / np.diff(np.log(c))[0] == pytest.approx(a)
    assert np.diff(np.log(d))[0] / np.diff(np.log(c))[0] == pytest.approx(b)
    n, d, _ = allocation.kaplan_optimum(*KAPLAN.values(), c, K)
    a, b = allocation.kaplan_exponents(KAPLAN["alpha_N"], KAPLAN["alpha_D"])
    assert np.diff(np.log(n))[0] / np.diff(np.log(c))[0] == pytest.approx(a)
    assert a + b == pytest.approx(1.0)


def test_vectorised_over_samples_and_budgets_and_nan_without_an_optimum():
    samples = np.array([0.3, 0.34, -0.1])[:, None]  # the last alpha has no optimum (loss falls forever in N)
    n, _, _ = allocation.chinchilla_optimum(1.7, 400.0, 410.0, samples, 0.28, np.array([1e20, 1e21, 1e22])[None, :], K)
    assert n.shape == (3, 3)
    assert np.isfinite(n[:2]).all() and np.isnan(n[2]).all()
    n, d = allocation.power_law_optimum(0.5, np.log(0.1), 0.5, np.log(10 / K), np.array([1e20]))
    assert n[0] == pytest.approx(1e9) and d[0] == pytest.approx(1e11 / K)
