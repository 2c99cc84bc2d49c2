"""Synthetic scaling data drawn from known laws with log-normal noise, as tables and as sweep directories."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

# The Chinchilla paper's fitted law (Hoffmann et al. 2022, eq. 10).
TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
K = 6.0  # FLOPs per parameter per token


def chinchilla(N: np.ndarray, D: np.ndarray, p: dict = TRUTH) -> np.ndarray:
    """E + A/N^alpha + B/D^beta."""
    return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]


def true_n_opt(C: np.ndarray | float, p: dict = TRUTH) -> np.ndarray:
    """argmin over N of the law at fixed C = K·N·D."""
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    return g * (np.asarray(C) / K) ** (p["beta"] / (p["alpha"] + p["beta"]))


def random_table(rng: np.random.Generator, n: int, noise: float, p: dict = TRUTH) -> dict[str, np.ndarray]:
    """n runs with N and D drawn log-uniformly (1e7..1e10 parameters, 1e8..1e11 tokens)."""
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), n))
    return {"N": N, "D": D, "C": K * N * D, "loss": chinchilla(N, D, p) * np.exp(rng.normal(0, noise, n))}


def isoflop_table(
    rng: np.random.Generator, budgets: np.ndarray, sizes: int, noise: float, spread: float = 16.0, p: dict = TRUTH
) -> dict[str, np.ndarray]:
    """For each budget, `sizes` models spaced log-evenly within a factor `spread` either side of the true optimum."""
    N = np.concatenate([true_n_opt(c, p) * np.geomspace(1 / spread, spread, sizes) for c in budgets])
    C = np.repeat(budgets, sizes).astype(float)
    D = C / (K * N)
    return {"N": N, "D": D, "C": C, "loss": chinchilla(N, D, p) * np.exp(rng.normal(0, noise, len(N)))}


def write_csv(path: Path, columns: dict[str, np.ndarray | list]) -> Path:
    """Write columns (all the same length) as a CSV with a header."""
    names = list(columns)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for i in range(len(columns[names[0]])):
            w.writerow([columns[c][i] for c in names])
    return path


def write_sweep(
    root: Path,
    table: dict[str, np.ndarray],
    rng: np.random.Generator,
    steps: int = 60,
    noise: float = 0.005,
    p: dict = TRUTH,
) -> Path:
    """A sweep directory: results.csv in the sweep contract plus runs/<run>/metrics.jsonl curves from the law."""
    root.mkdir(parents=True, exist_ok=True)
    runs = [f"r{i:03d}" for i in range(len(table["N"]))]
    final = []
    for run, N, D in zip(runs, table["N"], table["D"], strict=True):
        (root / "runs" / run).mkdir(parents=True)
        # Loss after s of `steps` steps is the law at the tokens seen so far (an ideal per-length schedule).
        s = np.arange(steps)
        loss = chinchilla(N, np.maximum(D * s / steps, 1.0), p) * np.exp(rng.normal(0, noise, steps))
        lines = [
            json.dumps({"step": int(i), "loss": float(v), "tokens_per_s": 1.0}) for i, v in zip(s, loss, strict=True)
        ]
        lines.append(json.dumps({"step": steps - 1, "eval_loss": float(table["loss"][len(final)])}))
        (root / "runs" / run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        final.append(float(loss[-1]))
    write_csv(
        root / "results.csv",
        {
            "run": runs,
            "N": table["N"],
            "N_nonembed": table["N"] * 0.9,
            "D": table["D"],
            "C": table["C"],
            "final_loss": final,
            "eval_loss": table["loss"],
            "best_eval_loss": table["loss"],
            "steps": [steps] * len(runs),
            "status": ["done"] * len(runs),
        },
    )
    return root
