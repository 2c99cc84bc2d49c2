"""The benchmark's plumbing: the PyTorch baseline matches our model, options, tables and a tiny run."""

import argparse
import importlib.machinery
import importlib.util
import math
import os

import jax
import pytest

from scalelab.bench import report, sections, suite
from scalelab.bench.ceiling import train_step_matmuls
from scalelab.bench.report import RESULTS_DIR
from scalelab.bench.shapes import LADDER, QUICK_LADDER, Shape, by_name
from scalelab.bench.suite import quick_args, targets
from scalelab.cli.bench import QUICK_REMAT_RUNGS, add_arguments, run_bench, torch_notice
from scalelab.model.counting import count_params, flops_per_token

MICRO = Shape("micro", d_model=32, n_layers=1, n_heads=2, seq_len=16, batch_size=2, vocab_size=64)


def test_ladder_holds_the_two_reference_shapes():
    ref = {s.name: s for s in LADDER}
    assert (ref["ref-512"].d_model, ref["ref-512"].n_layers, ref["ref-512"].n_heads) == (512, 4, 8)
    assert (ref["ref-512"].seq_len, ref["ref-512"].batch_size, ref["ref-512"].vocab_size) == (256, 8, 8192)
    assert (ref["ref-128"].d_model, ref["ref-128"].n_layers, ref["ref-128"].n_heads) == (128, 2, 4)
    assert (ref["ref-128"].seq_len, ref["ref-128"].batch_size, ref["ref-128"].vocab_size) == (128, 16, 4096)


def test_unknown_rung_is_an_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="ref-512"):
        by_name(["nope"])


def test_cli_rejects_unknown_names_before_running(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--rungs", "ref-512,huge", "--sections", "ladder"])
    args.prog = "scalelab"
    assert run_bench(args) == 2
    ladder = ", ".join(rung.name for rung in LADDER)  # the valid names in the order --help lists them
    assert f"--rungs: unknown huge; choose from {ladder}" in capsys.readouterr().err


def test_torch_baseline_has_exactly_our_parameters():
    torch_gpt = pytest.importorskip("scalelab.bench.torch_gpt")
    for shape in (MICRO, by_name(["ref-128"])[0]):
        model = torch_gpt.TorchGPT(shape)
        assert sum(p.numel() for p in model.parameters()) == count_params(shape.config().model).total


def test_torch_baseline_starts_near_uniform_loss():
    torch_gpt = pytest.importorskip("scalelab.bench.torch_gpt")
    run = torch_gpt.build("torch-fp32-eager", MICRO)
    assert abs(float(run.step()) - math.log(MICRO.vocab_size)) < 0.5


def test_table_prints_missing_values_as_dashes():
    rows = [{"a": "x", "b": 1.5}, {"a": "longer", "b": None}]
    lines = report.table(rows, [("a", "name", report.text), ("b", "value", report.fixed(1))]).splitlines()
    assert lines[0].split() == ["name", "value"]
    assert lines[2].split() == ["x", "1.5"] and lines[3].split() == ["longer", "-"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--depths", "4,0"], "--depths must be at least 1, got 0"),
        (["--window", "0"], "--window must be a positive"),
        (["--window", "inf"], "--window must be a positive number of seconds, got inf"),  # was an OverflowError
        (["--depths", ","], "--depths: no layer counts given"),
    ],
)
def test_cli_rejects_bad_numbers_before_running(flags, message, capsys, monkeypatch):
    monkeypatch.setattr(suite, "run", lambda opts, env: pytest.fail("the suite started"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(flags)
    args.prog = "scalelab"
    assert run_bench(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--sections", "--rungs", "--remat-rungs", "--variants"])
def test_cli_rejects_a_list_that_names_nothing(flag, capsys, monkeypatch):
    # `--sections ,` used to mean every section: an hour's run for a slip of the keyboard.
    monkeypatch.setattr(suite, "run", lambda opts, env: pytest.fail("the suite started"))
    args = _bench_args([flag, ","])
    assert run_bench(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"scalelab bench: error: {flag}: no names given; choose from ")


def test_cli_rejects_more_devices_than_jax_sees(capsys, monkeypatch):
    # jax.devices()[:n] would silently time fewer devices than asked for.
    for name in ("OMP_WAIT_POLICY", "XLA_PYTHON_CLIENT_PREALLOCATE"):  # run_bench sets them
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(suite, "run", lambda opts, env: pytest.fail("the suite started"))
    wanted = jax.device_count() + 1
    assert run_bench(_bench_args(["--devices", str(wanted), "--sections", "peak"])) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"scalelab bench: error: --devices {wanted}, but JAX sees {wanted - 1} cpu device(s); pass --devices "
        f"{wanted - 1} or fewer; on a CPU, simulate them with XLA_FLAGS=--xla_force_host_platform_device_count={wanted}"
    ]


@pytest.mark.parametrize(("flags", "folder"), [([], RESULTS_DIR), (["--quick"], RESULTS_DIR / "quick")])
def test_a_quick_run_never_writes_over_the_full_results(flags, folder, monkeypatch):
    for name in ("XLA_FLAGS", "OMP_WAIT_POLICY", "XLA_PYTHON_CLIENT_PREALLOCATE"):  # run_bench sets them
        monkeypatch.delenv(name, raising=False)
    chosen = {}

    def record(opts, env):
        chosen["dir"] = opts.results_dir
        return 0

    monkeypatch.setattr(suite, "run", record)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(flags)
    args.prog = "scalelab"
    assert run_bench(args) == 0 and chosen["dir"] == folder


def _bench_args(flags: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(flags)
    args.prog = "scalelab"
    return args


def _torch_found(monkeypatch, found: bool) -> None:
    """Make importlib find torch or not, whatever this venv holds."""
    original = importlib.util.find_spec

    def find_spec(name, *rest):
        if name == "torch":
            return importlib.machinery.ModuleSpec("torch", None) if found else None
        return original(name, *rest)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_torch_is_said_in_one_line_before_anything_runs(monkeypatch, capsys):
    for name in ("XLA_FLAGS", "OMP_WAIT_POLICY", "XLA_PYTHON_CLIENT_PREALLOCATE"):  # run_bench sets them
        monkeypatch.delenv(name, raising=False)
    _torch_found(monkeypatch, False)
    said_before_run = []
    monkeypatch.setattr(suite, "run", lambda opts, env: said_before_run.append(capsys.readouterr().err) or 0)
    assert run_bench(_bench_args(["--quick"])) == 0
    (err,) = said_before_run
    assert err.count("\n") == 1 and "torch is not installed" in err and "`make bench` installs the bench extra" in err


@pytest.mark.parametrize(
    ("flags", "found"),
    [(["--sections", "peak,depth"], False), (["--variants", "ours-bf16,ours-fp32"], False), ([], True)],
)
def test_no_torch_notice_when_the_run_needs_no_torch_or_has_it(flags, found, monkeypatch):
    _torch_found(monkeypatch, found)
    assert torch_notice(_bench_args(flags)) is None


def test_quick_runs_only_benchmarks_with_a_short_mode_and_with_its_arguments(tmp_path, monkeypatch):
    package = tmp_path / "bench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    writer = "import sys, pathlib\nout = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])\n"
    writer += "out.parent.mkdir(parents=True, exist_ok=True)\nout.write_text(' '.join(sys.argv[1:-2]))\n"
    (package / "short_bench.py").write_text(writer + 'QUICK_ARGS = ["--steps", "2"]\n')
    (package / "long_bench.py").write_text(writer)
    monkeypatch.setattr(suite, "BENCH_DIR", package)
    monkeypatch.setattr(suite, "BENCH_PACKAGE", "bench")
    rows = suite.run_others(quick=True, env=dict(os.environ), results_dir=tmp_path / "results")
    assert [(row["module"], row["status"]) for row in rows] == [("long_bench", "skipped"), ("short_bench", 0)]
    assert (tmp_path / "results" / "short.json").read_text() == "--steps 2"
    assert not (tmp_path / "results" / "long.json").exists()


def test_the_shipped_quick_modes_leave_out_the_slow_shapes():
    assert "ref-512" not in QUICK_LADDER and "ref-512" not in QUICK_REMAT_RUNGS
    slow = [path.name for path in suite.BENCH_DIR.glob("*_bench.py") if path.stem in ("loader_bench", "mesh_bench")]
    assert slow and all(quick_args(suite.BENCH_DIR / name) is None for name in slow)  # skipped by --quick
    assert quick_args(suite.BENCH_DIR / "attention_bench.py")[:2] == ["--lengths", "512"]


def test_other_benchmarks_write_into_the_chosen_results_dir(tmp_path, monkeypatch):
    package = tmp_path / "bench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "echo_bench.py").write_text(
        "import sys, pathlib\nout = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])\n"
        "out.parent.mkdir(parents=True, exist_ok=True)\nout.write_text('{}')\n"
    )
    monkeypatch.setattr(suite, "BENCH_DIR", package)
    monkeypatch.setattr(suite, "BENCH_PACKAGE", "bench")
    rows = suite.run_others(quick=False, env=dict(os.environ), results_dir=tmp_path / "results")
    assert [row["status"] for row in rows] == [0]
    assert (tmp_path / "results" / "echo.json").read_text() == "{}"


def test_quick_args_are_read_without_importing(tmp_path):
    module = tmp_path / "demo_bench.py"
    module.write_text('raise SystemExit("imported")\nQUICK_ARGS = ["--steps", "2"]\n')
    assert quick_args(module) == ["--steps", "2"]
    (tmp_path / "plain_bench.py").write_text("x = 1\n")
    assert quick_args(tmp_path / "plain_bench.py") is None


def test_targets_name_each_measured_ratio():
    rows = [
        {"impl": "ours-bf16", "rung": "ref-128", "d_model": 128, "vs_torch_best": 1.5, "mfu_bf16_peak": 0.1},
        {
            "impl": "ours-bf16",
            "rung": "ref-512",
            "d_model": 512,
            "vs_torch_best": 1.1,
            "mfu_bf16_peak": 0.8,
            "mfu_ceiling": 0.9,
        },
    ]
    lines = targets(rows, [{"n_layers": 4, "compile_s": 2.0}, {"n_layers": 48, "compile_s": 2.5}])
    assert "1.50 (target ≥ 1.3)" in lines[0]
    assert "80.0% (target ≥ 75%; its matmuls alone, each at its isolated rate, would reach 90.0%)" in lines[1]
    assert "1.25 (target ≤ 1.5)" in lines[2]


@pytest.mark.slow
def test_a_micro_ladder_measures_ours_and_the_baseline():
    pytest.importorskip("torch")
    peaks = sections.Peaks(fp32=1e11, bf16=2e11, vendor=None)
    rows, notes = sections.ladder(
        [MICRO],
        ["ours-bf16", "torch-fp32-eager"],
        jax.devices()[:1],
        peaks,
        rounds=1,
        window_s=0.05,
        log=lambda _: None,
    )
    assert not notes
    ours, baseline = rows
    assert ours["impl"] == "ours-bf16" and ours["memory_bytes"] > 0 and ours["tokens_per_s"] > 0
    assert baseline["impl"] == "torch-fp32-eager" and baseline["memory_bytes"] is None
    assert ours["vs_torch_best"] == pytest.approx(ours["tokens_per_s"] / baseline["tokens_per_s"])
    assert ours["mfu_ceiling"] > 0 and baseline["mfu_ceiling"] is None


@pytest.mark.parametrize("name", ["ref-128", "ref-512"])
def test_the_ceilings_matmuls_are_exactly_the_counted_flops_plus_the_recomputed_scores(name):
    shape = by_name([name])[0]
    matmuls = train_step_matmuls(shape)
    recomputed = next(mm for mm in matmuls if mm.name == "q·k").flops / 2  # the backward's second q·k
    counted = flops_per_token(shape.config().model, shape.seq_len) * shape.tokens_per_step
    assert sum(mm.flops for mm in matmuls) - recomputed == counted
