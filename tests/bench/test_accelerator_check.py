"""The accelerator check's --quick mode on a CPU: every part runs, its numbers are finite, the JSON is complete."""

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import jax
import pytest

from scalelab.bench import accelerator_parts
from scalelab.bench.accelerator_check import PARTS, main
from scalelab.bench.accelerator_parts import (
    AGREEMENT_TOLERANCE,
    CPU_MFU_REASON,
    TOY_ATTENTION,
    compare_losses,
    make_plan,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run of every part: (printed output, the JSON it wrote)."""
    out = tmp_path_factory.mktemp("accelerator") / "accelerator.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--quick", "--out", str(out)]) == 0
    return printed.getvalue(), json.loads(out.read_text())


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_the_json_has_every_field(quick):
    _, result = quick
    for key in ("written", "date", "device_kind", "platform", "jax", "host", "budget_s", "within_budget", "command"):
        assert key in result, key
    assert result["quick"] is True and result["platform"] == "cpu"
    assert set(result["parts"]) == set(PARTS)
    assert [line.split(":")[0] for line in result["verdicts"]] == list(PARTS)
    assert set(result["elapsed_s"]) == {*PARTS, "total"}
    assert all(_finite(s) and s >= 0 for s in result["elapsed_s"].values())
    assert result["elapsed_s"]["total"] >= sum(result["elapsed_s"][p] for p in PARTS)


def test_mfu_is_skipped_on_a_cpu_and_says_why(quick):
    printed, result = quick
    assert CPU_MFU_REASON in printed
    assert result["parts"]["mfu"] == {"skipped": CPU_MFU_REASON}


def test_decode_reports_finite_tokens_per_second(quick):
    _, result = quick
    decode = result["parts"]["decode"]
    assert decode["tokens_per_s"] > 0 and _finite(decode["tokens_per_s"])
    assert _finite(decode["generation_s"]) and _finite(decode["first_call_s"])
    assert decode["new_tokens"] == 16 and decode["batch"] == 2


def test_agreement_compares_two_finite_curves_that_learn(quick):
    _, result = quick
    agreement = result["parts"]["agreement"]
    bf16, fp32 = agreement["bf16_losses"], agreement["fp32_cpu_losses"]
    assert len(bf16) == len(fp32) == agreement["steps"] == 8
    assert all(_finite(v) for v in bf16 + fp32)
    assert fp32[-1] < fp32[0]  # the data is learnable, so the comparison is of curves that move
    assert _finite(agreement["max_relative_difference"])
    assert agreement["tolerance"] == AGREEMENT_TOLERANCE and agreement["passed"] is True


def test_attention_compares_two_implementations_at_two_lengths(quick):
    _, result = quick
    attention = result["parts"]["attention"]
    assert (attention["fused"], attention["baseline"]) == ("einsum", "xla")
    assert [row["seq_len"] for row in attention["rows"]] == [64, 256]
    for row in attention["rows"]:
        for impl in ("einsum", "xla"):
            assert _finite(row[impl]["step_s"]) and row[impl]["memory_bytes"] > 0, (row["seq_len"], impl)
        assert _finite(row["speedup"]) and _finite(row["memory_ratio"])


def test_loss_curves_further_apart_than_the_tolerance_fail():
    assert compare_losses([2.0, 1.0], [2.0, 1.0])["passed"]
    apart = compare_losses([2.0, 1.0 + 2 * AGREEMENT_TOLERANCE], [2.0, 1.0])
    assert not apart["passed"] and apart["worst_step"] == 1
    assert apart["max_relative_difference"] == pytest.approx(2 * AGREEMENT_TOLERANCE)
    assert not compare_losses([2.0, math.nan], [2.0, 1.0])["passed"]


def test_the_full_check_on_a_cpu_is_a_one_line_user_error(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--quick" in err and "GPU or TPU" in err


def test_an_unknown_part_is_refused_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--parts", "mfu,nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and ",".join(PARTS) in err


def test_a_part_that_breaks_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(plan, device, log):
        raise RuntimeError("out of memory")

    monkeypatch.setitem(accelerator_parts.CHECKS, "decode", broken)
    out = tmp_path / "accelerator.json"
    assert main(["--quick", "--parts", "decode,mfu", "--out", str(out)]) == 1
    parts = json.loads(out.read_text())["parts"]
    assert parts["decode"] == {"error": "RuntimeError: out of memory"}
    assert parts["mfu"] == {"skipped": CPU_MFU_REASON}


def test_the_compiled_step_is_searched_for_the_fused_kernel():
    plan = make_plan(True, "cpu")
    device = jax.devices()[0]
    shape = TOY_ATTENTION
    assert accelerator_parts._timed_train("t", shape, device, plan, marker="ENTRY")["fused_kernel_in_program"]
    absent = accelerator_parts._timed_train("t", shape, device, plan, marker="__cudnn$fmha")
    assert absent["fused_kernel_in_program"] is False and _finite(absent["step_s"])


def test_each_part_is_written_before_the_next_starts(tmp_path, monkeypatch):
    out = tmp_path / "accelerator.json"

    def reads_the_file(plan, device, log):  # stands in for a part the time limit would stop
        return {"tokens_per_s": 1.0, "written_before": sorted(json.loads(out.read_text())["parts"])}

    monkeypatch.setitem(accelerator_parts.CHECKS, "decode", reads_the_file)
    assert main(["--quick", "--parts", "mfu,decode", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["parts"]["decode"]["written_before"] == ["mfu"]


def test_a_kernel_that_breaks_loses_only_its_own_measurement(monkeypatch, tmp_path, capsys):
    # On the lent GPU a fused kernel may fail to compile or run out of memory at 8k tokens: the baseline's
    # numbers and the other length's must still be recorded, the failure named, and the exit status 1.
    def timed_train(name, shape, device, plan, overrides=(), marker=None):
        if name == "einsum" and shape.seq_len == 256:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return {"rung": shape.name, "seq_len": shape.seq_len, "step_s": 0.01, "memory_bytes": 1024}

    monkeypatch.setattr(accelerator_parts, "_timed_train", timed_train)
    out = tmp_path / "accelerator.json"
    assert main(["--quick", "--parts", "attention", "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    short, long = result["parts"]["attention"]["rows"]
    assert short["speedup"] == 1.0 and short["einsum"]["step_s"] == 0.01
    assert long["einsum"] == {"error": "RuntimeError: RESOURCE_EXHAUSTED: out of memory"}
    assert long["xla"]["step_s"] == 0.01 and "speedup" not in long
    assert result["verdicts"] == ["attention: xla ÷ einsum step time 64: 1.00; FAILED: 256 einsum"]
    assert "attention 256 tokens: einsum FAILED (RuntimeError)" in capsys.readouterr().out


def test_the_scripts_fallback_links_give_every_installed_package(tmp_path):
    # Where `pip install -e .` fails on the lent machine, accelerator_check.sh links each scalelab.<name> to its
    # folder; a package it misses is found only when something first imports it there, minutes into the run.
    script = (ROOT / "bench" / "accelerator_check.sh").read_text()
    block = script[script.index("    shim=$(mktemp -d)/site") : script.index("    export PYTHONPATH")]
    block = block.replace("$(mktemp -d)", str(tmp_path))
    subprocess.run(["bash", "-euc", block], cwd=ROOT, check=True)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    # Only the links may find scalelab: the editable install's finder is taken out of the import system.
    probe = (
        "import importlib, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        f"for name in {packages!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__path__[0].startswith({str(tmp_path / 'site')!r}), (name, module.__path__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
