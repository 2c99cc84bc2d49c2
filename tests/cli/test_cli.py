"""The scalelab console script: help texts and clean user errors."""

import argparse
import errno
import importlib.metadata
import subprocess
import sys

import pytest

from scalelab.cli import COMMANDS, FREE_SPACE, build_parser, describe_os_error, main
from scalelab.train.faults import EXIT_DIVERGED


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    # A command is listed when a line of the command table starts with its name; one registrar may add
    # several commands (register_posttrain adds sft, reward, dpo and chat-template), so ask each what it adds.
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.strip()}
    for register in COMMANDS:
        subparsers = argparse.ArgumentParser().add_subparsers()
        register(subparsers)
        added = set(subparsers.choices)
        assert added, f"{register.__name__} adds no command"
        assert added <= listed, f"{register.__name__}: {sorted(added - listed)} missing from --help"


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"scalelab {importlib.metadata.version('scalelab')}"


def test_every_subcommand_explains_itself(capsys):
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for name in subcommands:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: scalelab" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "parser"),
    [
        (["data", "prepare", "--corpus", "x"], "scalelab data prepare"),
        (["train", "gpt-tiny", "--foo"], "scalelab train"),
        (["--foo", "train", "gpt-tiny"], "scalelab"),
    ],
)
def test_an_unknown_argument_is_named_by_the_command_that_met_it(capsys, argv, parser):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {parser} ")  # that command's usage, not the top level's
    assert err.splitlines()[-1].startswith(f"{parser}: error: unrecognized arguments: --")


def test_the_error_line_is_one_write_so_other_output_cannot_split_it(monkeypatch, tmp_path):
    class Recorder:  # stderr as the OS sees it under PYTHONUNBUFFERED: every write() is a write(2)
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)
            return len(text)

        def flush(self):
            pass

    stderr = Recorder()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["train", "no-such-config", "--run-dir", str(tmp_path)]) == 2
    assert len(stderr.writes) == 1 and stderr.writes[0].startswith("scalelab train: error: ")
    assert stderr.writes[0].endswith("\n") and stderr.writes[0].count("\n") == 1


def test_bad_config_is_a_one_line_error_with_status_2(capsys, tmp_path):
    assert main(["train", "gpt-tiny", "--set", "model.n_layer=3", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'model.n_layer'; did you mean 'model.n_layers'?" in err
    assert main(["train", "no-such-config", "--run-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_sliding_window_longer_than_the_row_is_a_one_line_error(capsys, tmp_path):
    args = ["train", "gpt-tiny", "--set", "model.attention=sliding", "--set", "model.window=1000"]
    assert main([*args, "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "model.window (1000) covers every position of a row of train.seq_len=64" in err
    assert "set model.window below 64, or model.attention=full" in err


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl"), "free space there and re-run"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), "give a directory on a writable filesystem"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "afile/x"), "part of that path is a file"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/run"), "give a directory you may write to"),
    ],
)
def test_os_errors_read_as_the_path_the_reason_and_the_fix(error, expected):
    line = describe_os_error(error)
    assert line.startswith(f"{error.filename}: {error.strerror}; ") and expected in line


def test_an_os_error_is_one_line_with_status_2(capsys, monkeypatch):
    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/config.yaml")

    monkeypatch.setattr("scalelab.train.config_io.load_config", full_disk)
    assert main(["train", "gpt-tiny"]) == 2
    assert (
        capsys.readouterr().err == f"scalelab train: error: runs/x/config.yaml: No space left on device; {FREE_SPACE}\n"
    )


def test_out_of_device_memory_is_one_line_with_status_2_and_other_jax_errors_still_raise(capsys, monkeypatch):
    import jax

    def raise_(error):
        def load(*args):
            raise error

        return load

    oom = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 11529933103428 bytes.\nmore")
    monkeypatch.setattr("scalelab.train.config_io.load_config", raise_(oom))
    assert main(["train", "gpt-tiny"]) == 2
    assert capsys.readouterr().err == (
        "scalelab train: error: the device ran out of memory (Out of memory allocating 11529933103428 bytes); "
        "lower train.batch_size or train.seq_len (train.grad_accum keeps the batch), shrink the model, "
        "or set model.remat=full\n"
    )
    other = jax.errors.JaxRuntimeError("INTERNAL: something else")
    monkeypatch.setattr("scalelab.train.config_io.load_config", raise_(other))
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        main(["train", "gpt-tiny"])


def test_a_run_dir_that_is_a_file_is_refused_before_training(capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    assert main(["train", "gpt-tiny", "--run-dir", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err == (
        f"scalelab train: error: run directory {tmp_path / 'afile'} is a file, not a directory; give another --run-dir\n"
    )


def test_a_diverged_run_is_one_line_with_its_own_status(capsys, tmp_path):
    args = ["train", "gpt-tiny", "--quiet", "--run-dir", str(tmp_path)]
    for override in ("train.steps=4", "schedule.warmup_steps=0", "train.seq_len=16", "train.inject_nan_batches=[2]"):
        args += ["--set", override]
    assert main(args) == EXIT_DIVERGED != 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scalelab train: error: step 2 (data batch 2): loss nan")


HEAVY = ("jax", "flax", "optax", "orbax", "grain", "tensorflow_datasets", "matplotlib")


def _fresh_python(code: str) -> str:
    """Run `code` in a new interpreter (this one has imported everything already) and return its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


# Prints the heavy modules loaded so far, in the fresh interpreter.
PRINT_HEAVY = f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"


def test_the_parser_and_help_import_no_jax():
    # `scalelab --help`, an argument error and every command's parser start in well under a second.
    code = f"import sys; from scalelab.cli import build_parser; build_parser(); {PRINT_HEAVY}"
    assert _fresh_python(code) == "[]"


def test_the_supervisor_of_a_multi_process_run_imports_no_jax():
    # The supervisor only runs the command again as its child and watches it; the child imports JAX.
    code = f"""
import sys
import scalelab.cli.train as train
train.supervise = lambda *args, **kwargs: {PRINT_HEAVY} or 0
from scalelab.cli import main
sys.exit(main(["train", "gpt-tiny", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"]))
"""
    assert _fresh_python(code) == "[]"


@pytest.mark.parametrize("command", ["train", "sft"])
def test_a_config_that_is_not_there_is_reported_before_jax_loads(command):
    # Reading and checking a config's names needs no JAX: a mistyped config name fails in a fraction of a second.
    code = f"""
import contextlib, io, sys
from scalelab.cli import main
with contextlib.redirect_stderr(io.StringIO()) as err:
    status = main(["{command}", "no-such-config"])
assert status == 2 and "config 'no-such-config' not found" in err.getvalue(), (status, err.getvalue())
{PRINT_HEAVY}
"""
    assert _fresh_python(code) == "[]"
