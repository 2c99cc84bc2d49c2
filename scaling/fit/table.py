"""Read a fit input (a sweep directory, its results.csv, or any CSV with N, D or C, and a loss) and validate it.

Every problem is reported with the CSV line numbers (and run names, when there is a `run` column) it
comes from, so the user can find and fix the rows. Warnings use FitWarning; errors raise FitInputError.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scalelab.errors import UserError
from scalelab.units import parse_float

# Loss column tried in this order when none is given: a generic table's `loss`, then a sweep's held-out
# `eval_loss` (what the scaling law should describe), then its last training loss `final_loss`.
LOSS_PREFERENCE = ("loss", "eval_loss", "final_loss")
# Training FLOPs per parameter per token when the table gives no C of its own (forward + backward).
DEFAULT_FLOPS_PER_PARAM_TOKEN = 6.0
# Residual degrees of freedom (points beyond the parameters) a fit needs for a bootstrap interval. With
# none the fit passes through every point and resamples return the same numbers; with one, a row
# resample that drops a point again fits the rest exactly. Either way the spread would look exact.
MIN_SPARE = 2


def undetermined_reason(spare: int) -> str:
    """Why a fit with `spare` points beyond its parameters has no intervals, as the table and plots print it."""
    return "no points to spare" if spare <= 0 else f"only {spare} point to spare, {MIN_SPARE} needed"


class FitInputError(UserError, ValueError):
    """A fit input that cannot be used; the message names the rows and the fix."""


class FitWarning(UserWarning):
    """Something about the input the user should know; the fit goes on."""


@dataclass(frozen=True)
class Columns:
    """Which CSV columns hold N, D, C and the loss (loss=None: first of LOSS_PREFERENCE present)."""

    n: str = "N"
    d: str = "D"
    c: str = "C"
    loss: str | None = None


@dataclass(frozen=True)
class Curve:
    """One run's training curve: loss against FLOPs and tokens seen so far."""

    run: str
    N: float
    C: np.ndarray
    D: np.ndarray
    loss: np.ndarray


@dataclass(frozen=True)
class FitTable:
    """Validated points (all positive and finite), one per run, plus the training curves when a sweep has them."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    labels: tuple[str, ...]  # "line 4 (run n1_d2)": where each point comes from
    source: str
    columns: dict[str, str]  # role -> column used ("derived" where computed)
    flops_per_param_token: float
    curves: tuple[Curve, ...] = field(default=())
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other numeric columns asked for, by name

    def __len__(self) -> int:
        return len(self.loss)

    def rows(self, index: Sequence[int] | np.ndarray, limit: int = 8) -> str:
        """Name some rows for a message: 'line 3 (run a), line 7 (run b) and 4 more'."""
        idx = [int(i) for i in np.asarray(index).ravel()]
        shown = ", ".join(self.labels[i] for i in idx[:limit])
        return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def describe(labels: Sequence[str], limit: int = 8) -> str:
    """Join row labels for a message, eliding after `limit`."""
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def resolve_input(path: Path) -> Path:
    """The CSV a fit reads from INPUT (a sweep directory or a CSV file); FitInputError when there is none."""
    if path.is_dir():
        if (path / "results.csv").is_file():
            return path / "results.csv"
        if (path / "fit.json").is_file():
            raise FitInputError(f"{path} is a fit output directory; fit a sweep directory or a CSV instead")
        raise FitInputError(f"{path} has no results.csv; pass a sweep directory or a CSV file")
    if not path.is_file():
        raise FitInputError(f"{path} does not exist; pass a sweep directory or a CSV file")
    return path


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not part of the first column name
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise FitInputError(
            f"{path}: line {line} is not UTF-8 text (byte {raw[error.start]:#04x}); save the table as UTF-8 CSV"
        ) from error
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows = []
    for row in reader:
        extra = row.get(None)  # DictReader's place for fields beyond the header's columns
        if extra:
            raise FitInputError(
                f"{path}: line {reader.line_num} has {len(header) + len(extra)} fields but the header names "
                f"{len(header)} columns; remove the extra fields or name them in the header"
            )
        rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}))
    if not header:
        raise FitInputError(f"{path} is empty; it needs a header row with N, D (or C) and loss columns")
    if not rows and (path.parent / f".{path.name}.lock").exists():  # a sweep's table, before any run finished
        raise FitInputError(
            f"{path} lists no finished run yet; run the sweep (scalelab sweep run) until some runs finish"
        )
    if not rows:
        raise FitInputError(f"{path} has a header but no rows; add one row per run (N, D or C, and the loss)")
    return header, rows


def _pick_columns(header: list[str], cols: Columns, path: Path) -> dict[str, str | None]:
    available = ", ".join(header)
    if cols.loss is None:
        loss = next((c for c in LOSS_PREFERENCE if c in header), None)
        if loss is None:
            raise FitInputError(
                f"{path} has no loss column (looked for {', '.join(LOSS_PREFERENCE)}; found {available}); "
                "name yours with --loss-col"
            )
    elif cols.loss not in header:
        raise FitInputError(f"{path} has no column {cols.loss!r} (found {available}); fix --loss-col")
    else:
        loss = cols.loss
    if cols.n not in header:
        raise FitInputError(f"{path} has no parameter-count column {cols.n!r} (found {available}); use --n-col")
    d = cols.d if cols.d in header else None
    c = cols.c if cols.c in header else None
    if d is None and c is None:
        raise FitInputError(
            f"{path} has neither a token column {cols.d!r} nor a FLOP column {cols.c!r} (found {available}); "
            "name one with --d-col or --c-col"
        )
    return {"N": cols.n, "D": d, "C": c, "loss": loss}


def _keep_done(rows: list[tuple[int, dict[str, str]]], header: list[str], path: Path) -> list:
    if "status" not in header:
        return rows
    kept = [r for r in rows if r[1].get("status", "").lower() == "done"]
    dropped = [r for r in rows if r[1].get("status", "").lower() != "done"]
    if dropped:
        names = [
            f"line {n} ({row.get('run') or 'no run name'}: {row.get('status') or 'no status'})" for n, row in dropped
        ]
        warnings.warn(
            f"{path}: {len(dropped)} of {len(rows)} rows are not status 'done' and are left out: {describe(names)}",
            FitWarning,
            stacklevel=3,
        )
    if not kept:
        diverged = sum(1 for _, row in rows if row.get("status", "").lower() == "diverged")
        if diverged:  # the sweep never retries these, so "finish the sweep" would send the user in circles
            raise FitInputError(
                f"{path}: no row has status 'done' ({diverged} of {len(rows)} runs diverged, and re-running "
                "a sweep does not retry them); lower the learning rate (the spec's rules.lr) and run the "
                "sweep into a new --sweep-dir"
            )
        raise FitInputError(f"{path}: no row has status 'done'; finish the sweep (scalelab sweep run) first")
    return kept


def _validate(values: dict[str, np.ndarray], labels: list[str], path: Path, columns: dict[str, str]) -> None:
    problems = []
    for role, v in values.items():
        col = columns[role]
        for what, bad in (
            ("missing or not a number", np.isnan(v)),
            ("infinite", np.isinf(v)),
            ("zero or negative", np.isfinite(v) & (v <= 0)),
        ):
            if bad.any():
                problems.append(f"{col} is {what} in {describe([labels[i] for i in np.flatnonzero(bad)])}")
    if problems:
        raise FitInputError(
            f"{path}: "
            + "; ".join(problems)
            + ". Fix or remove those rows (or map other columns with --n-col/--d-col/--c-col/--loss-col)"
        )


def load_table(path: str | Path, columns: Columns | None = None, extra: Sequence[str] = ()) -> FitTable:
    """Read and validate a fit input; a sweep's run curves are attached when its runs/ directory has them.

    `extra` names more columns that must hold positive numbers (a sweep's `lr`, say); they come back in `extra`.
    """
    cols = columns or Columns()
    csv_path = resolve_input(Path(path))
    header, rows = _read_csv(csv_path)
    picked = _pick_columns(header, cols, csv_path)
    for name in extra:
        if name not in header:
            raise FitInputError(f"{csv_path} has no column {name!r} (found {', '.join(header)}); it is needed here")
    rows = _keep_done(rows, header, csv_path)
    labels = [f"line {n}" + (f" (run {row['run']})" if row.get("run") else "") for n, row in rows]

    def column(name: str | None) -> np.ndarray | None:
        return None if name is None else np.array([parse_float(row.get(name, ""), math.nan) for _, row in rows])

    values = {role: column(name) for role, name in picked.items() if name is not None}
    extras = {name: column(name) for name in extra}
    _validate(
        {**values, **extras},
        labels,
        csv_path,
        {**{k: v for k, v in picked.items() if v is not None}, **{n: n for n in extra}},
    )
    N, loss = values["N"], values["loss"]
    used = {role: name or "derived" for role, name in picked.items()}
    if "D" in values and "C" in values:
        D, C = values["D"], values["C"]
        # The table's own FLOP count (e.g. with the attention term) sets the FLOPs per parameter-token.
        k = float(np.median(C / (N * D)))
    elif "D" in values:
        D, k = values["D"], DEFAULT_FLOPS_PER_PARAM_TOKEN
        C = k * N * D
    else:
        C, k = values["C"], DEFAULT_FLOPS_PER_PARAM_TOKEN
        D = C / (k * N)
    curves = _load_curves(csv_path.parent, rows, N, D, C, header)
    return FitTable(
        N=N,
        D=D,
        C=C,
        loss=loss,
        labels=tuple(labels),
        source=str(csv_path.resolve()),
        columns=used,
        flops_per_param_token=k,
        curves=curves,
        extra=extras,
    )


def _read_curve(path: Path) -> tuple[np.ndarray, np.ndarray]:
    steps, losses = [], []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{n} is not valid JSON; that line is skipped", FitWarning, stacklevel=4)
                continue
            # Train lines carry `loss`; eval lines carry `eval_loss` and are not part of the training curve.
            if "loss" in record and "step" in record:
                steps.append(float(record["step"]))
                losses.append(float(record["loss"]) if record["loss"] is not None else math.nan)
    s, v = np.array(steps), np.array(losses)
    keep = np.isfinite(v) & (v > 0) & (s > 0)  # step 0 has seen no tokens
    s, v = s[keep], v[keep]
    order = np.argsort(s, kind="stable")
    s, first = np.unique(s[order], return_index=True)  # a resumed run logs each step once; guard anyway
    return s, v[order][first]


def _load_curves(
    root: Path, rows: list, N: np.ndarray, D: np.ndarray, C: np.ndarray, header: list[str]
) -> tuple[Curve, ...]:
    if "run" not in header or not (root / "runs").is_dir():
        return ()
    curves, missing = [], []
    for i, (_, row) in enumerate(rows):
        path = root / "runs" / row["run"] / "metrics.jsonl"
        if not path.is_file():
            missing.append(row["run"])
            continue
        steps, loss = _read_curve(path)
        total = parse_float(row.get("steps", ""), math.nan) if "steps" in header else math.nan
        total = total if np.isfinite(total) and total > 0 else (steps[-1] if len(steps) else math.nan)
        if len(steps) < 2:
            missing.append(row["run"])
            continue
        # Tokens and FLOPs grow linearly with steps: D/steps tokens and C/steps FLOPs per step.
        frac = steps / total
        curves.append(Curve(run=row["run"], N=float(N[i]), C=C[i] * frac, D=D[i] * frac, loss=loss))
    if missing and curves:
        warnings.warn(
            f"{len(missing)} runs have no usable training curve in {root / 'runs'} and are left out of approach 1: "
            f"{describe(missing)}",
            FitWarning,
            stacklevel=3,
        )
    return tuple(curves)


def group_by_c(C: np.ndarray, rtol: float) -> list[np.ndarray]:
    """Indices of isoFLOP groups: sorted C split wherever the next value is more than rtol above the previous."""
    order = np.argsort(C, kind="stable")
    logc = np.log(C[order])
    breaks = np.flatnonzero(np.diff(logc) > np.log1p(rtol)) + 1
    return [np.sort(g) for g in np.split(order, breaks)]
