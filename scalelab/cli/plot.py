"""`scalelab plot`: the plots of a saved fit, or of a table fitted first with `scalelab fit`'s options.

Heavy modules (matplotlib, the fitting code) are imported inside the command functions so that
`scalelab --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scalelab.cli.fit import (
    add_input_args,
    default_out,
    fit_input,
    output_dir,
    report_warnings,
    require_a_fit,
    writable_dir,
    write_fit,
)

EPILOG_PLOT = """examples:
  scalelab plot sweeps/demo/fit                        # the plots of a saved fit, next to its fit.json
  scalelab plot sweeps/demo/fit --out plots/demo       # ... somewhere else
  scalelab plot table.csv --n-col params --d-col tokens --loss-col val_loss --bootstrap 200
                                                       # fit a CSV into table.csv's fit/ first, then plot"""


def register_plot(subparsers: argparse._SubParsersAction) -> None:
    """Add the `plot` subcommand."""
    p = subparsers.add_parser(
        "plot",
        help="draw loss curves, isoFLOP profiles, N_opt(C), L(N, D) contours and residuals",
        description="Draw the fit plots as PNG and SVG. INPUT is a fit directory (with fit.json) or, to fit first, "
        "a sweep directory or CSV (then the fitting options apply, and the fit is saved in fit/ next to it).",
        epilog=EPILOG_PLOT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input", metavar="INPUT_OR_FIT_DIR", type=Path, help="fit directory, fit.json, sweep directory or CSV"
    )
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="where the plots go (default: the fit directory)"
    )
    fitting = add_input_args(p)
    p.set_defaults(func=run_plot, fit_options=[(a.option_strings[0], a.dest, a.default) for a in fitting])


def _read_fit(fit_json: Path) -> tuple[dict, Any]:
    """A saved fit and the table it was fitted from, read again the way the fit read it."""
    from scalelab.errors import UserError
    from scalelab.files import read_json
    from scalelab.scaling.fit.table import Columns, FitInputError, load_table

    fix = "re-run scalelab fit to write it again"
    fit = read_json(fit_json, fix)
    meta = fit.get("meta") if isinstance(fit, dict) else None
    if not isinstance(meta, dict) or not {"input", "column_flags"} <= meta.keys():
        raise UserError(f"{fit_json} has no 'meta' with the input and its columns, so it is not a scalelab fit; {fix}")
    try:
        with report_warnings("plot"):
            table = load_table(meta["input"], Columns(**meta["column_flags"]))
    except FitInputError as error:
        raise UserError(f"{fit_json} was fitted from {meta['input']}, which cannot be read now: {error}") from error
    return fit, table


def run_plot(args: argparse.Namespace) -> int:
    """Draw the plots from a fit directory, or fit INPUT first."""
    from scalelab.errors import UserError
    from scalelab.scaling.fit.plots import draw_all
    from scalelab.scaling.fit.table import resolve_input

    path: Path = args.input
    if args.approach == "lr":
        raise UserError(
            f"plot draws the scaling-law fits; `scalelab fit {path} --approach lr` draws the learning-rate rule itself"
        )
    fit_json = path if path.suffix == ".json" else path / "fit.json"
    if fit_json.is_file():
        fit, table = _read_fit(fit_json)
        given = [
            f"{flag} {v}"
            for flag, dest, default in args.fit_options
            if (value := getattr(args, dest)) != default
            for v in (value if isinstance(value, list) else [value])
        ]
        if given:  # a saved fit is drawn as it was made: these options would be silently ignored
            raise UserError(
                f"{fit_json} is a saved fit, drawn as it was made, so {', '.join(given)} would change nothing; "
                f"refit with `scalelab fit {fit['meta']['input']} {' '.join(given)} --out {fit_json.parent}`, "
                "then plot that"
            )
        out = writable_dir(args.out or fit_json.parent)
    else:
        resolve_input(path)  # a missing INPUT is the error, not a fit kept where its plots would go
        out = args.out or default_out(path)
        if (out / "fit.json").is_file():
            # A saved fit may come from other options (an approach, a budget); plotting must not replace it.
            raise UserError(
                f"{out / 'fit.json'} already holds a fit; plot it with `scalelab plot {out}`, refit with "
                f"`scalelab fit {path} --out {out}`, or pass --out with another directory"
            )
        with output_dir(out):
            fit, table = fit_input(args, "plot")
            require_a_fit(fit)
            print(f"wrote {write_fit(fit, out)}")
    with report_warnings("plot"):
        written, skipped = draw_all(fit, table, out)
    for p in written:
        print(f"wrote {p}")
    for name, reason in skipped.items():
        print(f"{name}.png and .svg skipped: {reason}")
    return 0
