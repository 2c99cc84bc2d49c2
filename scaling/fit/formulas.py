"""Scaling-law formulas in log space: parameters, fixed output names, default start grids, Huber objectives.

Every law predicts log L from log-features (log N, log D or log C) and is fitted by minimising the
Huber loss of log residuals. Positive scale parameters are fitted as logs (A = exp(a)), which keeps
them positive and the problem well scaled; the log-sum-exp form keeps the sums of powers stable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

HUBER_DELTA = 1e-3  # Chinchilla's choice: close to least absolute deviations, robust to outlying runs


def lse(*terms: jax.Array) -> jax.Array:
    """log(sum(exp(terms))), stable; the shift is held constant for autodiff, which is exact because LSE is shift-invariant."""
    m = terms[0]
    for t in terms[1:]:
        m = jnp.maximum(m, t)
    m = jax.lax.stop_gradient(m)
    return m + jnp.log(sum(jnp.exp(t - m) for t in terms))


def huber(r: jax.Array, delta: jax.Array) -> jax.Array:
    """Huber loss: quadratic within delta, linear outside."""
    a = jnp.abs(r)
    return jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclass(frozen=True)
class Law:
    """A fitted form: internal parameters (theta order), features, formula, and fixed public names."""

    name: str
    formula: str
    features: tuple[str, ...]  # table columns whose logs are the inputs, e.g. ("N", "D")
    params: tuple[str, ...]  # internal parameter names in theta order
    default_grid: tuple[tuple[float, ...], ...]  # start values per internal parameter
    form: int  # index into FORMS
    to_public: Callable[[np.ndarray], dict[str, np.ndarray]]  # theta (..., p) -> public names

    def grid(self, overrides: Mapping[str, tuple[float, ...]] | None = None) -> np.ndarray:
        """All start points: the Cartesian product of the per-parameter grids (overrides by internal name)."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(self.params)
        if unknown:
            raise ValueError(f"{self.name} has no parameter {sorted(unknown)}; its parameters are {list(self.params)}")
        axes = [overrides.get(p, g) for p, g in zip(self.params, self.default_grid, strict=True)]
        return np.array(list(itertools.product(*axes)), dtype=np.float64)

    def log_pred(self, theta: jax.Array, features: jax.Array) -> jax.Array:
        """Predicted log loss at log-features (k, n)."""
        return FORMS[self.form](theta, features)

    def predict(self, theta: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Loss (not its log) at log-features (k, n)."""
        log_l = self.log_pred(jnp.asarray(theta, jnp.float32), jnp.asarray(features, jnp.float32))
        return np.exp(np.asarray(log_l, np.float64))


def _steps(start: float, stop: float, step: float) -> tuple[float, ...]:
    return tuple(float(v) for v in np.round(np.arange(start, stop + step / 2, step), 10))


# Approach 3: L = E + A/N^alpha + B/D^beta, i.e. log L = LSE(a - alpha log N, b - beta log D, e).
def _chinchilla(theta: jax.Array, x: jax.Array) -> jax.Array:
    a, b, e, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
    return lse(a - alpha * x[0], b - beta * x[1], e)


def _chinchilla_public(theta: np.ndarray) -> dict[str, np.ndarray]:
    t = np.asarray(theta)
    return {
        "E": np.exp(t[..., 2]),
        "A": np.exp(t[..., 0]),
        "B": np.exp(t[..., 1]),
        "alpha": t[..., 3],
        "beta": t[..., 4],
    }


APPROACH3 = Law(
    name="approach3",
    formula="L = E + A/N^alpha + B/D^beta",
    features=("N", "D"),
    params=("a", "b", "e", "alpha", "beta"),
    # The Chinchilla paper's grid: 6 x 6 x 5 x 5 x 5 = 4500 starts.
    default_grid=(_steps(0, 25, 5), _steps(0, 25, 5), _steps(-1, 1, 0.5), _steps(0, 2, 0.5), _steps(0, 2, 0.5)),
    form=0,
    to_public=_chinchilla_public,
)


# Kaplan et al. (2020) eq. 1.5: L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D. Fitted with the exponent
# ratio r = alpha_N/alpha_D as a parameter, so log L = alpha_D * LSE(r (n_c - log N), d_c - log D) has no division.
def _kaplan(theta: jax.Array, x: jax.Array) -> jax.Array:
    n_c, d_c, r, alpha_d = theta[0], theta[1], theta[2], theta[3]
    return alpha_d * lse(r * (n_c - x[0]), d_c - x[1])


def _kaplan_public(theta: np.ndarray) -> dict[str, np.ndarray]:
    t = np.asarray(theta)
    return {"N_c": np.exp(t[..., 0]), "D_c": np.exp(t[..., 1]), "alpha_N": t[..., 2] * t[..., 3], "alpha_D": t[..., 3]}


KAPLAN = Law(
    name="kaplan",
    formula="L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
    features=("N", "D"),
    params=("n_c", "d_c", "r", "alpha_D"),
    # log N_c, log D_c span 2e4..4e15; r and alpha_D cover Kaplan's 0.8 and 0.095 with room either side.
    default_grid=(_steps(10, 35, 5), _steps(10, 35, 5), (0.25, 0.5, 1.0, 2.0), (0.05, 0.1, 0.2, 0.4)),
    form=1,
    to_public=_kaplan_public,
)


# Single-variable laws L(X) = E + A X^-alpha, and the E = 0 variants log L = a - alpha log X.
def _single(theta: jax.Array, x: jax.Array) -> jax.Array:
    e, a, alpha = theta[0], theta[1], theta[2]
    return lse(e, a - alpha * x[0])


def _single_public(theta: np.ndarray) -> dict[str, np.ndarray]:
    t = np.asarray(theta)
    return {"E": np.exp(t[..., 0]), "A": np.exp(t[..., 1]), "alpha": t[..., 2]}


def _pure_power(theta: jax.Array, x: jax.Array) -> jax.Array:
    a, alpha = theta[0], theta[1]
    return a - alpha * x[0]


def _pure_power_public(theta: np.ndarray) -> dict[str, np.ndarray]:
    t = np.asarray(theta)
    return {"E": np.zeros_like(t[..., 0]), "A": np.exp(t[..., 0]), "alpha": t[..., 1]}


# Law.form indexes this tuple. Each form reads the leading entries of theta and rows of x it needs, so
# every law can be fitted with theta padded to THETA_SIZE and x padded to FEATURE_ROWS.
FORMS = (_chinchilla, _kaplan, _single, _pure_power)
THETA_SIZE = 5
FEATURE_ROWS = 2


def objective(
    theta: jax.Array, w: jax.Array, x: jax.Array, y: jax.Array, delta: jax.Array, form: jax.Array
) -> jax.Array:
    """Weighted Huber loss of the log residuals of law FORMS[form], divided by delta and the total weight.

    The division changes no minimiser; it makes the objective about the mean absolute log residual, so
    one set of optimiser tolerances suits every table size and delta. `form` is a runtime switch so that
    one compiled minimiser serves every law.
    """
    r = jax.lax.switch(form, FORMS, theta, x) - y
    return jnp.sum(w * huber(r, delta)) / (jnp.sum(w) * delta)


def single_law(variable: str, irreducible: bool = True) -> Law:
    """L_X = E + A X^-alpha (name 'L_X'), or with E = 0 (name 'L_X_E0'), for X in N, D, C."""
    if variable not in ("N", "D", "C"):
        raise ValueError(f"single-variable laws are in N, D or C, not {variable!r}")
    if irreducible:
        return Law(
            name=f"L_{variable}",
            formula=f"L = E + A/{variable}^alpha",
            features=(variable,),
            params=("e", "a", "alpha"),
            default_grid=(_steps(-1, 1, 0.5), _steps(0, 25, 5), _steps(0, 2, 0.5)),
            form=2,
            to_public=_single_public,
        )
    return Law(
        name=f"L_{variable}_E0",
        formula=f"L = A/{variable}^alpha",
        features=(variable,),
        params=("a", "alpha"),
        default_grid=(_steps(0, 25, 5), _steps(0, 2, 0.5)),
        form=3,
        to_public=_pure_power_public,
    )


SINGLE_LAWS = tuple(single_law(v, e) for v in ("N", "D", "C") for e in (True, False))
