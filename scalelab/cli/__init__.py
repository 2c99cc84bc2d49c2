"""The `scalelab` console script: one parser with every subcommand, and user errors turned into exit codes.

This package sits above every other, so it imports each command group directly; the packages
below it are libraries and know nothing of argparse. Each module here adds one group of
subcommands through its `register_*` function.
"""

from __future__ import annotations

import argparse
import errno
import importlib.metadata
import re
import sys
from collections.abc import Callable, Sequence

from scalelab.cli import bench, data, evaluate, fit, generate, plot, posttrain, ppo, sweep, train
from scalelab.errors import UserError
from scalelab.runtime.compile_cache import use_compile_cache
from scalelab.runtime.host import keep_freed_memory
from scalelab.train.faults import EXIT_DIVERGED, EXIT_PREEMPTED, NonFiniteLossError, Preempted, note_early_interrupts

# Subcommand registrars, in the order `scalelab --help` lists them.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    train.register_train,
    posttrain.register_posttrain,
    ppo.register_ppo,
    ppo.register_sentiment,
    generate.register_generate,
    evaluate.register_eval,
    data.register_data,
    data.register_tokenizer,
    sweep.register_sweep,
    fit.register_fit,
    plot.register_plot,
    bench.register_bench,
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


def describe_os_error(error: OSError) -> str:
    """One line for an OS error: the path, the OS's reason and what to do about it."""
    if error.filename is None:  # raised with a message of our own (e.g. a config that is not found)
        return str(error)
    where = str(error.filename) + ("" if error.filename2 is None else f" -> {error.filename2}")
    fix = _OS_FIXES.get(error.errno or 0, "check the path and re-run")
    return f"{where}: {error.strerror or error}; {fix}"


_UNRECOGNIZED_IN = "_unrecognized_in"


class _Parser(argparse.ArgumentParser):
    """argparse's parser, reading "-1e12" as the number it is (subcommand parsers are of this class too).

    Python 3.11's argparse takes a negative number in exponent notation for an option, so `--budget
    -1e12` said "expected one argument" instead of the option's own message; 3.13 reads it as a number.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    # argparse reports an argument no subcommand knows from the top-level parser ("scalelab: error:
    # unrecognized arguments"); the innermost parser that met it names itself and shows its own usage.
    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and not hasattr(namespace, _UNRECOGNIZED_IN):
            setattr(namespace, _UNRECOGNIZED_IN, self)
        return namespace, extras

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            getattr(namespace, _UNRECOGNIZED_IN, self).error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = _Parser(
        prog="scalelab",
        description="Train transformer language models with JAX and measure how their loss scales.",
    )
    parser.add_argument("--version", action="version", version=f"scalelab {importlib.metadata.version('scalelab')}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def _say(line: str) -> None:
    """Write `line` and its newline to stderr in one write: with PYTHONUNBUFFERED, print() writes the
    newline separately, and a library's C++ logging on the same stream could land between the two."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def out_of_memory(error: BaseException) -> str | None:
    """The one-line report for XLA running out of device memory, or None for any other error.

    Matched by name and status so that a command that never imports JAX need not import it here.
    """
    if type(error).__name__ not in ("JaxRuntimeError", "XlaRuntimeError"):
        return None
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not first.startswith("RESOURCE_EXHAUSTED"):
        return None
    detail = first.removeprefix("RESOURCE_EXHAUSTED:").strip().rstrip(".")
    return (
        f"the device ran out of memory ({detail}); lower train.batch_size or train.seq_len "
        "(train.grad_accum keeps the batch), shrink the model, or set model.remat=full"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the chosen command and turn user errors into clean messages."""
    keep_freed_memory()  # before any large allocation: 1.3x CPU steps on a 17M-parameter model
    args = build_parser().parse_args(argv)
    use_compile_cache()  # before anything compiles: a repeated command loads its programs from disk
    restore_interrupts = note_early_interrupts()
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        _say(f"scalelab {args.command}: error: {error}")
        return 2
    except OSError as error:
        _say(f"scalelab {args.command}: error: {describe_os_error(error)}")
        return 2
    except NonFiniteLossError as error:  # the run diverged: re-running it unchanged would diverge again
        _say(f"scalelab {args.command}: error: {error}")
        return EXIT_DIVERGED
    except Preempted as stop:  # a clean stop on SIGTERM/SIGINT; re-running the command resumes
        _say(f"scalelab {args.command}: {stop}")
        return EXIT_PREEMPTED
    except Exception as error:  # XLA's out-of-memory: a traceback from deep in JAX that names no setting
        report = out_of_memory(error)
        if report is None:
            raise
        _say(f"scalelab {args.command}: error: {report}")
        return 2
    except KeyboardInterrupt:  # Ctrl-C where no guard is up (start-up, fit, plot): nothing was half-written
        _say(f"\nscalelab {args.command}: interrupted (Ctrl-C) before it finished")
        return 130
    finally:
        restore_interrupts()


if __name__ == "__main__":
    sys.exit(main())
