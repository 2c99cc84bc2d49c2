"""The `scalelab` console script: one parser whose subcommands come from a registry.

Each entry names a `register(subparsers)` function by import path, so a package adds a
command without this module importing it at load time (and scaling/ stays above train/).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

# Subcommand registrars, in the order `scalelab --help` lists them.
COMMANDS: tuple[str, ...] = (
    "train.commands:register_train",
    "train.generate:register_generate",
    "train.data.cli:register_data",
    "train.data.cli:register_tokenizer",
    "scaling.sweep_cli:register_sweep",
    "scaling.fit_cli:register_fit",
    "scaling.fit_cli:register_plot",
    "bench.cli:register_bench",
)


FREE_SPACE = "free space there and re-run the same command (a run with checkpoints resumes from its newest one)"
# What to do about the OS errors a user can cause (a full disk, a path that is a file, a read-only mount).
_OS_FIXES = {
    errno.ENOSPC: FREE_SPACE,
    errno.EDQUOT: FREE_SPACE,
    errno.EROFS: "give a directory on a writable filesystem",
    errno.EACCES: "give a directory you may write to, or fix its permissions",
    errno.EPERM: "give a directory you may write to, or fix its permissions",
    errno.ENOTDIR: "part of that path is a file, not a directory; give another path",
    errno.EEXIST: "something that is not a directory is in the way; move it or give another path",
    errno.EISDIR: "that is a directory; give a file path",
}


class CLIError(Exception):
    """A user error: printed as one line naming the problem and the fix, exit status 2."""


def describe_os_error(error: OSError) -> str:
    """One line for an OS error: the path, the OS's reason and what to do about it."""
    if error.filename is None:  # raised with a message of our own (e.g. a config that is not found)
        return str(error)
    where = str(error.filename) + ("" if error.filename2 is None else f" -> {error.filename2}")
    fix = _OS_FIXES.get(error.errno or 0, "check the path and re-run")
    return f"{where}: {error.strerror or error}; {fix}"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="scalelab",
        description="Train transformer language models with JAX and measure how their loss scales.",
    )
    parser.add_argument("--version", action="version", version=f"scalelab {importlib.metadata.version('scalelab')}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in COMMANDS:
        module_name, function_name = entry.split(":")
        getattr(importlib.import_module(module_name), function_name)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the chosen command and turn user errors into clean messages."""
    from model.config import ConfigError
    from train.faults import EXIT_DIVERGED, EXIT_PREEMPTED, NonFiniteLossError, Preempted
    from train.host import keep_freed_memory

    keep_freed_memory()  # before any large allocation: 1.3x CPU steps on a 17M-parameter model
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ConfigError) as error:
        print(f"scalelab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"scalelab {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:  # the run diverged: re-running it unchanged would diverge again
        print(f"scalelab {args.command}: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except Preempted as stop:  # a clean stop on SIGTERM/SIGINT; re-running the command resumes
        print(f"scalelab {args.command}: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())
