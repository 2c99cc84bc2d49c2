"""`scalelab fit` and `scalelab plot`: power-law fits of a results table, fit.json, and the plots.

Heavy modules (jax, matplotlib, the fitting code) are imported inside the command functions so that
`scalelab --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

APPROACH_CHOICES = ("1", "2", "3", "kaplan", "single", "all")
EPILOG_FIT = """examples:
  scalelab fit sweeps/chinchilla                       # all approaches, 1000 bootstrap resamples
  scalelab fit results.csv --approach 3 --budget 1e21  # N_opt, D_opt and loss at 1e21 FLOPs
  scalelab fit table.csv --n-col params --d-col tokens --loss-col val_loss
  scalelab fit results.csv --grid alpha=0:2:0.25 --grid kaplan.r=0.5,1,2"""


def _add_input_args(p: argparse.ArgumentParser) -> None:
    cols = p.add_argument_group("columns (defaults: N, D, C; loss: first of loss, eval_loss, final_loss)")
    cols.add_argument("--n-col", default="N", metavar="NAME", help="column with parameter counts N (default: N)")
    cols.add_argument("--d-col", default="D", metavar="NAME", help="column with training tokens D (default: D)")
    cols.add_argument("--c-col", default="C", metavar="NAME", help="column with training FLOPs C (default: C)")
    cols.add_argument("--loss-col", default=None, metavar="NAME", help="column with the loss to fit")
    fit = p.add_argument_group("fitting")
    fit.add_argument(
        "--approach",
        choices=APPROACH_CHOICES,
        default="all",
        help="1: envelope of training curves; 2: isoFLOP parabolas; 3: L = E + A/N^alpha + B/D^beta; "
        "kaplan: Kaplan et al. L(N, D); single: L(N), L(D), L(C) with and without E; all (default)",
    )
    fit.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="K",
        help="bootstrap resamples for intervals; 0 turns them off (default: 1000)",
    )
    fit.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="C",
        help="FLOP budget for N_opt, D_opt and the predicted loss, e.g. 1e21",
    )
    fit.add_argument("--ci", type=float, default=0.95, metavar="LEVEL", help="interval coverage (default: 0.95)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default: 0)")
    fit.add_argument(
        "--huber-delta", type=float, default=1e-3, metavar="DELTA", help="Huber delta on log residuals (default: 1e-3)"
    )
    fit.add_argument(
        "--c-rtol",
        type=float,
        default=0.1,
        metavar="R",
        help="runs whose C differ by less than this fraction share an isoFLOP group (default: 0.1)",
    )
    fit.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="[LAW.]PARAM=VALUES",
        help="replace a start grid: VALUES is START:STOP:STEP or a comma list; LAW defaults to approach3 "
        "(parameters a, b, e, alpha, beta; kaplan: n_c, d_c, r, alpha_D). Repeatable",
    )


def register_fit(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fit` subcommand."""
    p = subparsers.add_parser(
        "fit",
        help="fit scaling laws to a sweep or any results table",
        description="Fit power laws (Chinchilla approaches 1-3, Kaplan, single-variable laws) to INPUT:\n"
        "a sweep directory or a CSV with columns N, D (or C) and loss. Writes fit.json and prints a table.",
        epilog=EPILOG_FIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", type=Path, help="sweep directory (with results.csv) or CSV file")
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output directory (default: fit/ next to INPUT)"
    )
    _add_input_args(p)
    p.set_defaults(func=run_fit)


def register_plot(subparsers: argparse._SubParsersAction) -> None:
    """Add the `plot` subcommand."""
    p = subparsers.add_parser(
        "plot",
        help="draw loss curves, isoFLOP profiles, N_opt(C), L(N, D) contours and residuals",
        description="Draw the fit plots as PNG and SVG. INPUT is a fit directory (with fit.json) or, to fit first, "
        "a sweep directory or CSV (then the fitting options apply).",
    )
    p.add_argument(
        "input", metavar="INPUT_OR_FIT_DIR", type=Path, help="fit directory, fit.json, sweep directory or CSV"
    )
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="where the plots go (default: the fit directory)"
    )
    _add_input_args(p)
    p.set_defaults(func=run_plot)


def _parse_values(spec: str) -> tuple[float, ...]:
    if ":" in spec:
        start, stop, step = (float(v) for v in spec.split(":"))
        if not step > 0 or stop < start:
            raise ValueError
        n = math.floor((stop - start) / step + 1e-9) + 1
        values = tuple(round(start + i * step, 10) for i in range(n))
    else:
        values = tuple(float(v) for v in spec.split(","))
    if not all(math.isfinite(v) for v in values):
        raise ValueError
    return values


def parse_grids(specs: list[str]) -> dict[str, dict[str, tuple[float, ...]]]:
    """--grid [LAW.]PARAM=VALUES options as {law: {param: values}}."""
    from train.cli import CLIError

    grids: dict[str, dict[str, tuple[float, ...]]] = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        law, _, param = key.rpartition(".")
        try:
            parsed = _parse_values(values)
        except ValueError:
            parsed = ()
        if not param or not parsed:
            raise CLIError(f"--grid {spec!r}: expected [LAW.]PARAM=START:STOP:STEP or a comma list, e.g. alpha=0:2:0.5")
        grids.setdefault(law or "approach3", {})[param] = parsed
    return grids


@contextlib.contextmanager
def _report_warnings(command: str) -> Iterator[None]:
    """Print FitWarnings as one-line messages as they happen."""
    from scaling.table import FitWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", FitWarning)
        shown = warnings.showwarning

        def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
            if issubclass(category, FitWarning):
                print(f"scalelab {command}: warning: {message}", file=sys.stderr)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fit_input(args: argparse.Namespace, command: str) -> tuple[dict, Any]:
    """Load INPUT, run the requested fits and return (fit.json object, table); user errors become CLIError."""
    from scaling.laws import APPROACH3, KAPLAN, SINGLE_LAWS
    from scaling.pipeline import APPROACHES, FitSettings, run_fits
    from scaling.table import Columns, FitInputError, load_table
    from train.cli import CLIError

    if args.bootstrap < 0:
        raise CLIError(f"--bootstrap {args.bootstrap}: the number of resamples must be 0 or more")
    if not 0 < args.ci < 1:
        raise CLIError(f"--ci {args.ci}: the interval level must lie between 0 and 1, e.g. 0.95")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise CLIError(f"--budget {args.budget}: the budget must be a positive FLOP count, e.g. 1e21")
    grids = parse_grids(args.grid)
    laws = {law.name: law for law in (APPROACH3, KAPLAN, *SINGLE_LAWS)}
    for name, params in grids.items():
        if name not in laws:
            raise CLIError(f"--grid {name}.…: no law {name!r}; laws with grids are {', '.join(laws)}")
        unknown = set(params) - set(laws[name].params)
        if unknown:
            raise CLIError(
                f"--grid: {name} has no parameter {sorted(unknown)[0]!r}; its parameters are {', '.join(laws[name].params)}"
            )
    settings = FitSettings(
        approaches=APPROACHES if args.approach == "all" else (args.approach,),
        bootstrap=args.bootstrap,
        level=args.ci,
        budget=args.budget,
        seed=args.seed,
        delta=args.huber_delta,
        c_rtol=args.c_rtol,
        grids=grids,
        progress=args.bootstrap >= 200,
    )
    with _report_warnings(command):
        try:
            table = load_table(args.input, Columns(args.n_col, args.d_col, args.c_col, args.loss_col))
            result = run_fits(table, settings)
        except FitInputError as error:
            raise CLIError(str(error)) from error
    meta = {
        "input": table.source,
        "columns": table.columns,
        # What was asked for, so `scalelab plot FIT_DIR` reads the input the same way.
        "column_flags": {"n": args.n_col, "d": args.d_col, "c": args.c_col, "loss": table.columns["loss"]},
        "rows": len(table),
        "curves": len(table.curves),
        "flops_per_param_token": table.flops_per_param_token,
        "approach": args.approach,
        "bootstrap": args.bootstrap,
        "ci_level": args.ci,
        "seed": args.seed,
        "huber_delta": args.huber_delta,
        "c_rtol": args.c_rtol,
        "budget": args.budget,
        "grids": grids,
    }
    return _clean({"meta": meta, **result}), table


def _default_out(path: Path) -> Path:
    return (path if path.is_dir() else path.parent) / "fit"


def run_fit(args: argparse.Namespace) -> int:
    """Fit, write fit.json, print the table."""
    from scaling.report import format_report

    fit, _ = fit_input(args, "fit")
    out = args.out or _default_out(args.input)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps(fit, indent=1, allow_nan=False) + "\n")
    print(format_report(fit), end="")
    print(f"wrote {out / 'fit.json'}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    """Draw the plots from a fit directory, or fit INPUT first."""
    from scaling.plots import draw_all
    from scaling.table import Columns, FitInputError, load_table
    from train.cli import CLIError
    from train.files import read_json

    path: Path = args.input
    fit_json = path if path.suffix == ".json" else path / "fit.json"
    if fit_json.is_file():
        fit = read_json(fit_json, "re-run scalelab fit to write it again")
        meta = fit["meta"]
        columns = Columns(**meta["column_flags"])
        try:
            with _report_warnings("plot"):
                table = load_table(meta["input"], columns)
        except FitInputError as error:
            raise CLIError(f"{fit_json} was fitted from {meta['input']}, which cannot be read now: {error}") from error
        out = args.out or fit_json.parent
    else:
        fit, table = fit_input(args, "plot")
        out = args.out or _default_out(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fit.json").write_text(json.dumps(fit, indent=1, allow_nan=False) + "\n")
    with _report_warnings("plot"):
        written = draw_all(fit, table, out)
    for p in written:
        print(f"wrote {p}")
    return 0
