"""Compute-optimal allocation: N_opt, D_opt and the predicted loss at a FLOP budget C, per approach.

Convention: training FLOPs C = k·N·D with k the table's FLOPs per parameter per token (6 when the table
gives no C; the median of C/(N·D) when it does, which folds in e.g. the attention term). Approaches 3 and
Kaplan minimise their L(N, D) on that constraint in closed form; approaches 1 and 2 evaluate their
fitted power laws N_opt = G_N C^a, D_opt = G_D C^b directly and have no loss model (loss_pred is None).
All functions are vectorised: parameters may be arrays of bootstrap samples, C an array of budgets.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray | float


def chinchilla_optimum(
    E: Array, A: Array, B: Array, alpha: Array, beta: Array, C: Array, k: float
) -> tuple[Array, Array, Array]:
    """argmin of E + A/N^alpha + B/D^beta subject to k·N·D = C: (N_opt, D_opt, loss); NaN unless alpha, beta > 0."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        alpha, beta = np.where(np.asarray(alpha) > 0, alpha, np.nan), np.where(np.asarray(beta) > 0, beta, np.nan)
        log_f = np.log(np.asarray(C) / k)
        # Setting dL/dN = 0 on D = F/N gives N^(alpha+beta) = (alpha A / (beta B)) F^beta.
        log_n = (np.log(alpha * A) - np.log(beta * B) + beta * log_f) / (alpha + beta)
        n = np.exp(log_n)
        d = np.exp(log_f - log_n)
        return n, d, E + A * n ** (-alpha) + B * d ** (-beta)


def chinchilla_exponents(alpha: Array, beta: Array) -> tuple[Array, Array]:
    """(a, b) with N_opt ∝ C^a, D_opt ∝ C^b implied by approach 3."""
    return np.asarray(beta) / (np.asarray(alpha) + beta), np.asarray(alpha) / (np.asarray(alpha) + beta)


def kaplan_optimum(
    N_c: Array, D_c: Array, alpha_N: Array, alpha_D: Array, C: Array, k: float
) -> tuple[Array, Array, Array]:
    """argmin of [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D subject to k·N·D = C: (N_opt, D_opt, loss)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        r = np.where(np.asarray(alpha_N) / alpha_D > 0, np.asarray(alpha_N) / alpha_D, np.nan)
        log_f = np.log(np.asarray(C) / k)
        # Minimising the bracket (N_c/N)^r + D_c N / F gives N^(r+1) = r N_c^r F / D_c.
        log_n = (np.log(r) + r * np.log(N_c) + log_f - np.log(D_c)) / (r + 1)
        n = np.exp(log_n)
        d = np.exp(log_f - log_n)
        return n, d, ((N_c / n) ** r + D_c / d) ** alpha_D


def kaplan_exponents(alpha_N: Array, alpha_D: Array) -> tuple[Array, Array]:
    """(a, b) implied by the Kaplan law: N_opt ∝ C^(1/(1+r)) with r = alpha_N/alpha_D."""
    r = np.asarray(alpha_N) / alpha_D
    return 1 / (1 + r), r / (1 + r)


def power_law_optimum(a: Array, log_gn: Array, b: Array, log_gd: Array, C: Array) -> tuple[Array, Array]:
    """(N_opt, D_opt) from approach 1 or 2's fitted lines in log C."""
    log_c = np.log(np.asarray(C))
    return np.exp(np.asarray(a) * log_c + log_gn), np.exp(np.asarray(b) * log_c + log_gd)
