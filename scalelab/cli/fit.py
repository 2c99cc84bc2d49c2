"""`scalelab fit`: power-law fits of a results table into fit.json, and the options `scalelab plot` shares.

Heavy modules (jax, matplotlib, the fitting code) are imported inside the command functions so that
`scalelab --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scalelab.units import parse_float

APPROACH_CHOICES = ("1", "2", "3", "kaplan", "single", "all", "lr")
EPILOG_FIT = """examples:
  scalelab fit sweeps/demo                             # all approaches, 1000 bootstrap resamples
  scalelab fit sweeps/demo --approach 3 --budget 1e21  # N_opt, D_opt and loss at 1e21 FLOPs
  scalelab fit table.csv --n-col params --d-col tokens --loss-col val_loss
  scalelab fit sweeps/lr-grid --approach lr            # best lr per size -> lr rule for a sweep spec
  scalelab fit sweeps/demo --grid alpha=0:2:0.25 --grid kaplan.r=0.5,1,2"""


def _number_in(name: str, low: float, high: float) -> Callable[[str], float]:
    """argparse type: a float strictly between low and high; the message names the range."""

    def parse(text: str) -> float:
        value = parse_float(text, math.nan)
        if not low < value < high:  # also rejects nan
            bound = f"above {low:g}" + (f" and below {high:g}" if high < math.inf else " and finite")
            raise argparse.ArgumentTypeError(f"{text!r}: {name} must be a number {bound}")
        return value

    return parse


def _count(text: str) -> int:
    """argparse type for --bootstrap: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of resamples must be a whole number, 0 or more")
    return value


def add_input_args(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """The column and fitting options of fit and plot; returns them, so plot can tell which were given."""
    added: list[argparse.Action] = []

    def add(group: argparse._ArgumentGroup, *flags: str, **options: Any) -> None:
        added.append(group.add_argument(*flags, **options))

    cols = p.add_argument_group("columns (defaults: N, D, C; loss: first of loss, eval_loss, final_loss)")
    add(cols, "--n-col", default="N", metavar="NAME", help="column with parameter counts N (default: N)")
    add(cols, "--d-col", default="D", metavar="NAME", help="column with training tokens D (default: D)")
    add(cols, "--c-col", default="C", metavar="NAME", help="column with training FLOPs C (default: C)")
    add(cols, "--loss-col", default=None, metavar="NAME", help="column with the loss to fit")
    fit = p.add_argument_group("fitting")
    add(
        fit,
        "--approach",
        choices=APPROACH_CHOICES,
        default="all",
        help="1: envelope of training curves; 2: isoFLOP parabolas; 3: L = E + A/N^alpha + B/D^beta; "
        "kaplan: Kaplan et al. L(N, D); single: L(N), L(D), L(C) with and without E; all (default: the laws); "
        "lr: the best learning rate of each size in a learning-rate grid, fit as lr* = a N^b, for a spec's rules.lr",
    )
    add(
        fit,
        "--bootstrap",
        type=_count,
        default=1000,
        metavar="K",
        help="bootstrap resamples for intervals; 0 turns them off (default: 1000)",
    )
    add(
        fit,
        "--budget",
        type=_number_in("the budget", 0, math.inf),
        default=None,
        metavar="C",
        help="FLOP budget for N_opt, D_opt and the predicted loss, e.g. 1e21",
    )
    add(
        fit,
        "--ci",
        type=_number_in("the interval level", 0, 1),
        default=0.95,
        metavar="LEVEL",
        help="interval coverage (default: 0.95)",
    )
    add(fit, "--seed", type=int, default=0, help="seed of the bootstrap resamples (default: 0)")
    add(
        fit,
        "--huber-delta",
        type=_number_in("the Huber delta", 0, math.inf),
        default=1e-3,
        metavar="DELTA",
        help="Huber delta on log residuals, above 0 (default: 1e-3)",
    )
    add(
        fit,
        "--c-rtol",
        type=_number_in("the isoFLOP tolerance", 0, math.inf),
        default=0.1,
        metavar="R",
        help="runs whose C differ by less than this fraction share an isoFLOP group (default: 0.1)",
    )
    add(
        fit,
        "--grid",
        action="append",
        default=[],
        metavar="[LAW.]PARAM=VALUES",
        help="replace a start grid: VALUES is START:STOP:STEP or a comma list; LAW defaults to approach3 "
        "(parameters a, b, e, alpha, beta; kaplan: n_c, d_c, r, alpha_D). Repeatable",
    )
    return added


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
    add_input_args(p)
    p.set_defaults(func=run_fit)


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
    from scalelab.errors import UserError

    grids: dict[str, dict[str, tuple[float, ...]]] = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        law, _, param = key.rpartition(".")
        try:
            parsed = _parse_values(values)
        except ValueError:
            parsed = ()
        if not param or not parsed:
            raise UserError(
                f"--grid {spec!r}: expected [LAW.]PARAM=START:STOP:STEP or a comma list, e.g. alpha=0:2:0.5"
            )
        grids.setdefault(law or "approach3", {})[param] = parsed
    return grids


@contextlib.contextmanager
def report_warnings(command: str) -> Iterator[None]:
    """Print FitWarnings as one-line messages as they happen."""
    from scalelab.scaling.fit.table import FitWarning

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
    """Load INPUT, run the requested fits and return (fit.json object, table); user errors become UserError."""
    from scalelab.errors import UserError
    from scalelab.scaling.fit.fit_json import APPROACHES, FitSettings, run_fits
    from scalelab.scaling.fit.formulas import APPROACH3, KAPLAN, SINGLE_LAWS
    from scalelab.scaling.fit.table import Columns, FitInputError, load_table

    grids = parse_grids(args.grid)
    laws = {law.name: law for law in (APPROACH3, KAPLAN, *SINGLE_LAWS)}
    for name, params in grids.items():
        if name not in laws:
            raise UserError(f"--grid {name}.…: no law {name!r}; laws with grids are {', '.join(laws)}")
        unknown = set(params) - set(laws[name].params)
        if unknown:
            raise UserError(
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
    with report_warnings(command):
        try:
            table = load_table(args.input, Columns(args.n_col, args.d_col, args.c_col, args.loss_col))
            result = run_fits(table, settings)
        except FitInputError as error:
            raise UserError(str(error)) from error
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


def default_out(path: Path) -> Path:
    return (path if path.is_dir() else path.parent) / "fit"


def writable_dir(out: Path) -> Path:
    """Create the output directory and check that files can be written there, before any fitting."""
    from scalelab.errors import UserError

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except FileExistsError as error:
        raise UserError(f"--out {out}: a file of that name exists; name a directory") from error
    except OSError as error:
        raise UserError(
            f"--out {out}: cannot write there ({error.strerror}); name a directory you can write"
        ) from error
    return out


@contextlib.contextmanager
def output_dir(out: Path) -> Iterator[Path]:
    """`writable_dir` for as long as the command runs: a directory it created goes again if the command fails."""
    created = not out.exists()
    writable_dir(out)
    try:
        yield out
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # only ever empty: nothing was written
        raise


def require_a_fit(fit: dict) -> None:
    """A fit in which no approach could be fitted is an error listing what each approach lacked."""
    from scalelab.errors import UserError

    if any(k not in ("meta", "skipped") for k in fit):
        return
    reasons = "".join(f"\n  {name}: {why}" for name, why in fit.get("skipped", {}).items())
    raise UserError(f"no approach could be fitted to {fit['meta']['input']}:{reasons}")


def write_fit(fit: dict, out: Path) -> Path:
    from scalelab.files import write_atomic

    path = out / "fit.json"
    write_atomic(path, json.dumps(fit, indent=1, allow_nan=False) + "\n")  # tools may be reading the old one
    return path


def run_lr_fit(args: argparse.Namespace, out: Path) -> int:
    """Fit the learning-rate rule of a learning-rate grid, write lr_rule.json and its plot, print the rule."""
    from scalelab.errors import UserError
    from scalelab.scaling.fit.lr_rule import LR_RULE_FILE, fit_lr_rule, format_lr_rule, plot_lr_rule, write_lr_rule
    from scalelab.scaling.fit.table import Columns, FitInputError, load_table

    with report_warnings("fit"):
        try:
            table = load_table(args.input, Columns(args.n_col, args.d_col, args.c_col, args.loss_col), extra=("lr",))
            rule = fit_lr_rule(table)
        except FitInputError as error:
            raise UserError(str(error)) from error
    print(format_lr_rule(rule))
    write_lr_rule(rule, out / LR_RULE_FILE, table.source)
    plot_lr_rule(rule, out / "lr_rule.png")
    print(f"wrote {out / LR_RULE_FILE} (a spec uses it as rules.lr: {{from_fit: {out / LR_RULE_FILE}}})")
    print(f"wrote {out / 'lr_rule.png'}")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    """Fit, write fit.json, print the table."""
    from scalelab.scaling.fit.report import format_report

    with output_dir(args.out or default_out(args.input)) as out:
        if args.approach == "lr":
            return run_lr_fit(args, out)
        fit, _ = fit_input(args, "fit")
        require_a_fit(fit)
        path = write_fit(fit, out)
    print(format_report(fit), end="")
    print(f"wrote {path}")
    return 0
