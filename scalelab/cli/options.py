"""Options that several commands share, defined once so they read and behave the same everywhere."""

from __future__ import annotations

import argparse


def add_overrides(parser: argparse.ArgumentParser, example: str = "model.n_layers=4") -> None:
    """`--set KEY=VALUE` (repeatable) into `args.overrides`: config keys, values parsed as YAML."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. {example}; VALUE is parsed as YAML (repeatable)",
    )


def add_group(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str, metavar: str = "SUBCOMMAND"
):
    """A command whose work is split into subcommands (`scalelab data prepare`); returns the group's subparsers."""
    parser = subparsers.add_parser(name, help=help, description=description)
    return parser.add_subparsers(dest=f"{name}_command", metavar=metavar, required=True)


def add_dry_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --dry-run and --devices-per-process to a command that launches training."""
    group = parser.add_argument_group("dry run")
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="print the cluster, this process's place in it, the mesh on the job's devices and each process's "
        "batch rows, then exit without touching a device",
    )
    group.add_argument(
        "--devices-per-process",
        type=int,
        metavar="N",
        help="with --dry-run: devices each process has (default: from the cluster's variables, else this host's)",
    )
