"""Running sweeps in-process: a micro sweep end to end in two shards, skips, records and failures."""

from __future__ import annotations

import json
import math
import os
import re
import time

import jax
import pytest

from scalelab.cli import main
from scalelab.data.objectives import model_lengths
from scalelab.data.storage import DataError
from scalelab.model.config import ConfigError
from scalelab.model.counting import flops_per_token
from scalelab.scaling.sweep import runner
from scalelab.scaling.sweep.plan import make_plan
from scalelab.scaling.sweep.results import (
    COLUMNS,
    EXTRA_COLUMNS,
    RESULTS_CSV,
    IncompleteRunError,
    curve_summary,
    read_csv,
    rebuild_csv,
    write_result,
)
from scalelab.scaling.sweep.runner import SweepProgress, run_sweep
from scalelab.scaling.sweep.spec import spec_from_dict
from scalelab.scaling.sweep.spec_types import SpecError
from scalelab.train.config_io import save_config
from scalelab.train.loop import NonFiniteLossError
from scalelab.train.metrics import read_metrics
from tests.scaling.sweep.specs import micro, write_spec


def test_micro_sweep_runs_end_to_end_in_two_shards_then_skips_everything(tmp_path):
    # one size at two budgets keeps this to two real runs (compiling dominates a tiny run on a CPU)
    plan = make_plan(spec_from_dict(micro(isoflop__sizes=[3e3])))
    names = [run.name for run in plan.runs]
    assert len(names) == 2

    first = run_sweep(plan, tmp_path, shard=(0, 2), quiet=True)
    assert first.skipped == 0 and not first.failed and len(first.ran) == first.shard_runs == 1
    rows = read_csv(tmp_path / RESULTS_CSV)
    assert [row["run"] for row in rows] == [name for name in names if name in first.ran]

    second = run_sweep(plan, tmp_path, shard=(1, 2), quiet=True)
    assert sorted(first.ran + second.ran) == sorted(names)  # the shards split the sweep exactly
    rows = read_csv(tmp_path / RESULTS_CSV)
    assert [row["run"] for row in rows] == names and second.rows == 2
    assert list(rows[0])[: len(COLUMNS)] == list(COLUMNS)
    for run, row in zip(plan.runs, rows, strict=True):
        run_dir = tmp_path / "runs" / run.name
        records = read_metrics(run_dir)
        steps = [r["step"] for r in records if "loss" in r]
        assert steps == list(range(run.steps))  # the whole loss curve is kept, every step once
        assert int(row["N"]) == run.n_total and int(row["N_nonembed"]) == run.n_nonembed
        fpt = flops_per_token(run.config.model, 16, model_lengths(run.config))
        assert int(row["C"]) == fpt * int(row["D"]) == run.flops
        assert int(row["D"]) == run.tokens and int(row["steps"]) == run.steps and row["status"] == "done"
        evals = [r["eval_loss"] for r in records if "eval_loss" in r]
        assert float(row["eval_loss"]) == evals[-1] and float(row["best_eval_loss"]) == min(evals)
        assert float(row["final_loss"]) == [r["loss"] for r in records if "loss" in r][-1]
        assert math.isfinite(float(row["final_loss"])) and float(row["budget"]) == run.budget
        assert (run_dir / "config.yaml").exists()
    # the tiny model learns on the larger budget: more compute, lower loss at the same size
    assert float(rows[1]["eval_loss"]) < float(rows[0]["eval_loss"])

    stamps = {name: os.stat(tmp_path / "runs" / name / "metrics.jsonl").st_mtime_ns for name in names}
    table = (tmp_path / RESULTS_CSV).read_text()
    again = run_sweep(plan, tmp_path, quiet=True)
    assert again.ran == [] and again.skipped == 2
    assert stamps == {name: os.stat(tmp_path / "runs" / name / "metrics.jsonl").st_mtime_ns for name in names}
    assert (tmp_path / RESULTS_CSV).read_text() == table

    lr = {"value": 1e-3, "ref_params": 1e4, "exponent": -0.25}
    changed = make_plan(spec_from_dict(micro(isoflop__sizes=[3e3], rules__lr=lr)))
    with pytest.raises(SpecError, match=r"optimizer\.lr.*use a new --sweep-dir"):
        run_sweep(changed, tmp_path, quiet=True)


def _fake_train(outcomes):
    """A stand-in for train() that raises per run name, to test the runner's bookkeeping alone."""

    def fake(cfg, run_dir, quiet=False):
        outcome = outcomes.get(cfg.name)
        if outcome is not None:
            raise outcome
        save_config(cfg, run_dir / "config.yaml")  # as train() does first
        lines = [f'{{"step": {s}, "loss": {5.0 - s / 100}}}' for s in range(cfg.train.steps)]
        lines.append(f'{{"step": {cfg.train.steps - 1}, "eval_loss": 4.5}}')
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    return fake


def test_divergence_is_a_result_and_a_failure_is_retried(tmp_path, monkeypatch):
    plan = make_plan(spec_from_dict(micro()))
    diverging, failing = plan.runs[1].name, plan.runs[2].name
    outcomes = {diverging: NonFiniteLossError("step 3: loss nan"), failing: MemoryError("out of memory")}
    monkeypatch.setattr(runner, "train", _fake_train(outcomes))
    report = run_sweep(plan, tmp_path, quiet=True)
    assert report.diverged == [diverging] and report.failed == [failing] and len(report.ran) == 2
    rows = {row["run"]: row for row in read_csv(tmp_path / RESULTS_CSV)}
    assert failing not in rows and len(rows) == 3  # a failed run has no row until it succeeds
    assert rows[diverging]["status"] == "diverged" and rows[diverging]["final_loss"] == "nan"
    assert rows[plan.runs[0].name]["eval_loss"] == "4.5"

    monkeypatch.setattr(runner, "train", _fake_train({}))
    retry = run_sweep(plan, tmp_path, quiet=True)
    assert retry.ran == [failing] and retry.skipped == 3  # the diverged run is not retried
    assert [row["run"] for row in read_csv(tmp_path / RESULTS_CSV)] == [run.name for run in plan.runs]


def test_wall_time_adds_up_every_session_of_a_run(tmp_path, monkeypatch):
    plan = make_plan(spec_from_dict(micro()))
    slow = plan.runs[0].name
    finish = _fake_train({})

    def stopped_after_a_while(cfg, run_dir, quiet=False):  # a session that ends without finishing the run
        if cfg.name == slow:
            save_config(cfg, run_dir / "config.yaml")  # as train() does first
            time.sleep(0.3)
            raise MemoryError("out of memory")
        finish(cfg, run_dir, quiet)

    monkeypatch.setattr(runner, "train", stopped_after_a_while)
    run_sweep(plan, tmp_path, quiet=True)
    monkeypatch.setattr(runner, "train", finish)  # the next session finishes it at once
    run_sweep(plan, tmp_path, quiet=True)
    rows = {row["run"]: row for row in read_csv(tmp_path / RESULTS_CSV)}
    assert float(rows[slow]["wall_s"]) >= 0.3  # the first session's time is not lost
    assert all(float(rows[run.name]["wall_s"]) < 0.3 for run in plan.runs[1:])


def test_a_run_that_stops_early_is_not_recorded(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 5.0}\n{"step": 1, "loss": 4.9}\n')
    with pytest.raises(IncompleteRunError, match="ends at step 2 of 10"):
        curve_summary(tmp_path, 10)


def test_sweep_records_are_readable_by_other_users_of_the_sweep_dir(tmp_path):
    # A temp file from tempfile keeps mode 0600; the records must get what open() gives (0666 less the umask).
    row = dict.fromkeys((*COLUMNS, *EXTRA_COLUMNS), 1) | {"run": "a"}
    old = os.umask(0o022)
    try:
        write_result(tmp_path / "runs" / "a", row)
        rebuild_csv(tmp_path, ["a"])
    finally:
        os.umask(old)
    for path in (tmp_path / "runs" / "a" / "result.json", tmp_path / RESULTS_CSV):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_rebuild_lists_committed_runs_once_in_plan_order(tmp_path, monkeypatch):
    plan = make_plan(spec_from_dict(micro()))
    monkeypatch.setattr(runner, "train", _fake_train({}))
    run_sweep(plan, tmp_path, shard=(1, 2), quiet=True)
    names = [run.name for run in plan.runs]
    committed = [name for name in names if (tmp_path / "runs" / name / "result.json").exists()]
    assert len(committed) == 2
    assert rebuild_csv(tmp_path, names + names[::-1]) == 2  # a name listed twice is still one row
    assert [row["run"] for row in read_csv(tmp_path / RESULTS_CSV)] == committed


def test_a_hand_edited_results_csv_is_kept_aside_not_overwritten(tmp_path, capsys):
    for name in ("a", "b"):
        write_result(tmp_path / "runs" / name, dict.fromkeys((*COLUMNS, *EXTRA_COLUMNS), 1) | {"run": name})
    rebuild_csv(tmp_path, ["a"])
    assert rebuild_csv(tmp_path, ["a", "b"]) == 2  # a table the rebuild wrote, with a row more since: not an edit
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.csv.lock", RESULTS_CSV, "runs"]
    assert capsys.readouterr().err == ""

    edited = (tmp_path / RESULTS_CSV).read_text().replace("\nb,1,", "\nb,2,")  # N of run b changed by hand
    (tmp_path / RESULTS_CSV).write_text(edited)
    assert rebuild_csv(tmp_path, ["a", "b"]) == 2
    [kept] = tmp_path.glob("results.edited-*.csv")
    assert kept.read_text() == edited  # the edit survives, byte for byte
    assert [row["N"] for row in read_csv(tmp_path / RESULTS_CSV)] == ["1", "1"]  # the table is the committed rows
    err = capsys.readouterr().err
    assert "differed from the runs' result.json files (edited by hand" in err and kept.name in err
    assert f"scalelab fit {kept}" in err
    rebuild_csv(tmp_path, ["a", "b"])
    assert len(list(tmp_path.glob("results.edited-*.csv"))) == 1  # the rebuilt table is not an edit
    (tmp_path / "runs" / "b" / "result.json").unlink()  # how a run is recorded anew: not an edit either
    assert rebuild_csv(tmp_path, ["a", "b"]) == 1
    assert len(list(tmp_path.glob("results.edited-*.csv"))) == 1 and capsys.readouterr().err == ""
    (tmp_path / RESULTS_CSV).write_text("not,a\nsweep table\n")  # whatever else is there is kept too
    assert rebuild_csv(tmp_path, ["a", "b"]) == 1
    assert len(list(tmp_path.glob("results.edited-*.csv"))) == 2


def test_sweep_eta_fits_a_fixed_cost_per_run_plus_a_flop_rate():
    plan = make_plan(spec_from_dict(micro()))
    runs = list(plan.runs)
    assert plan.costs(runs) == {run.name: run.flops for run in runs}  # independent runs cost their C
    progress = SweepProgress("sweep micro", runs, runs, enabled=False, costs=plan.costs(runs))
    assert progress.eta() is None
    progress.finish(runs[0], 5.0 + runs[0].flops / 1e8)
    assert progress.eta() == pytest.approx(sum(r.flops for r in runs[1:]) * progress.finished[0][1] / runs[0].flops)
    progress.finish(runs[1], None)  # a failed run: no time, no FLOPs
    progress.finish(runs[2], 5.0 + runs[2].flops / 1e8)
    assert progress.eta() == pytest.approx(5.0 + runs[3].flops / 1e8)
    progress.close()


def test_sweep_plan_probes_shapes_and_estimates_the_wall_time(tmp_path, capsys):
    # Branch runs keep a checkpoint at their branch point, far past the probe's few steps.
    spec = micro(
        isoflop__budgets=[2e8, 4e8],
        isoflop__sizes=[3e3],
        branches={"cooldown_fraction": 0.2},
        rules__warmup_tokens_per_param=1,
    )
    path = write_spec(tmp_path, spec)
    assert main(["sweep", "plan", str(path), "--probe-steps", "4"]) == 0
    out = capsys.readouterr().out
    step_ms, fixed_s = re.search(r"iso-C2e8-d16l1-s0: ([\d.]+) ms/step, ([\d.]+) s per run to build", out).groups()
    assert float(step_ms) > 0 and float(fixed_s) > 0
    minutes = float(re.search(r"estimated wall time on this machine: ([\d.]+) min", out).group(1))
    assert minutes * 60 + 3 >= float(fixed_s)  # minutes are printed to 0.1 (6 s)
    assert os.listdir(tmp_path) == ["micro.yaml"]  # the probe leaves no run directory behind


def test_a_sweep_dir_holding_runs_the_plan_lacks_is_refused_before_any_write(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "train", _fake_train({}))
    run_sweep(make_plan(spec_from_dict(micro())), tmp_path, quiet=True)
    table = (tmp_path / RESULTS_CSV).read_text()
    one_budget = make_plan(spec_from_dict(micro(isoflop__budgets=[4e8])))  # the same spec less its 2e8 runs
    with pytest.raises(SpecError) as error:
        run_sweep(one_budget, tmp_path, quiet=True)
    message = str(error.value)
    assert "holds 2 finished run(s) that spec 'micro' does not plan (iso-C2e8-d16l1-s0, iso-C2e8-d32l1-s0)" in message
    assert "use another --sweep-dir" in message and "delete those runs" in message
    assert (tmp_path / RESULTS_CSV).read_text() == table  # every finished run keeps its row


def test_the_planned_config_check_runs_before_any_write_and_covers_other_shards_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "train", _fake_train({}))
    plan = make_plan(spec_from_dict(micro()))
    run_sweep(plan, tmp_path, shard=(0, 2), quiet=True)
    (tmp_path / RESULTS_CSV).unlink()
    changed = make_plan(spec_from_dict(micro(rules__lr={"value": 1e-3, "ref_params": 1e4, "exponent": -0.25})))
    # shard 1 has not started, but shard 0's finished runs were trained with another lr
    with pytest.raises(SpecError, match=r"optimizer\.lr.*use a new --sweep-dir"):
        run_sweep(changed, tmp_path, shard=(1, 2), quiet=True)
    assert not (tmp_path / RESULTS_CSV).exists()
    assert len(list((tmp_path / "runs").iterdir())) == 2  # shard 1 trained nothing


def test_a_config_error_in_a_run_stops_the_sweep_with_one_line_and_keeps_finished_runs(tmp_path, monkeypatch, capsys):
    plan = make_plan(spec_from_dict(micro()))
    first, broken = plan.runs[0].name, plan.runs[1].name
    missing = DataError("dataset 'scalelab_text' is not prepared; run scalelab data prepare")
    monkeypatch.setattr(runner, "train", _fake_train({broken: missing}))
    with pytest.raises(ConfigError, match=f"run {broken}: dataset 'scalelab_text' is not prepared"):
        run_sweep(plan, tmp_path, quiet=True)
    assert [row["run"] for row in read_csv(tmp_path / RESULTS_CSV)] == [first]
    assert sorted(os.listdir(tmp_path / "runs")) == [first]  # the runs after it were not tried

    capsys.readouterr()
    assert main(["sweep", "run", str(write_spec(tmp_path, micro())), "--sweep-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err  # the sweep's progress bar, then the error
    line = err.rstrip("\n").splitlines()[-1]
    assert line.startswith(f"scalelab sweep: error: run {broken}: dataset") and "finished runs are kept" in line
    assert "Traceback" not in err and err.count("scalelab sweep: error:") == 1


@pytest.mark.parametrize(("text", "lacks"), [('{"run": "x"}', "N, N_nonembed"), ("[]", "run, N,")])
def test_a_result_json_missing_columns_is_an_error_naming_the_file_and_the_fix(tmp_path, monkeypatch, text, lacks):
    monkeypatch.setattr(runner, "train", _fake_train({}))
    plan = make_plan(spec_from_dict(micro()))
    run_sweep(plan, tmp_path, quiet=True)
    run_dir = tmp_path / "runs" / plan.runs[2].name
    if text.startswith("{"):  # one key gone, as a hand edit or a foreign tool might leave it
        row = json.loads((run_dir / "result.json").read_text())
        del row["wall_s"]
        text, lacks = json.dumps(row), "lacks wall_s;"
    (run_dir / "result.json").write_text(text)
    with pytest.raises(ConfigError) as error:
        run_sweep(plan, tmp_path, quiet=True)
    message = str(error.value)
    assert f"{run_dir / 'result.json'}: not a complete run record" in message and lacks in message
    assert message.endswith(f"delete {run_dir / 'result.json'} and run the sweep again to record that run anew")
    (run_dir / "result.json").unlink()  # as the message says
    assert run_sweep(plan, tmp_path, quiet=True).ran == [plan.runs[2].name]
    assert len(read_csv(tmp_path / RESULTS_CSV)) == len(plan.runs)


def test_a_sweep_dir_that_is_a_file_is_refused_before_anything_uses_it(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    cache = jax.config.jax_compilation_cache_dir
    assert main(["sweep", "run", str(write_spec(tmp_path, micro())), "--sweep-dir", str(afile)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert jax.config.jax_compilation_cache_dir == cache and afile.read_text() == "not a directory"


def test_only_process_0_prints_the_sweeps_summary(tmp_path, monkeypatch, capsys):
    path = write_spec(tmp_path, micro(isoflop__sizes=[3e3]))
    report = runner.SweepReport(shard_runs=2, skipped=2, rows=2)
    monkeypatch.setattr(runner, "run_sweep", lambda *args, **kwargs: report)
    command = ["sweep", "run", str(path), "--sweep-dir", str(tmp_path / "sweep")]
    assert main(command) == 0
    assert "sweep micro: 0 run(s) trained, 2 already done" in capsys.readouterr().out
    monkeypatch.setattr(jax, "process_index", lambda: 1)  # another process of a multi-process shard
    assert main(command) == 0
    assert capsys.readouterr().out == ""


def test_a_run_trained_before_but_unrecorded_is_reported_as_recorded_not_trained(tmp_path, capsys):
    spec = micro(isoflop__sizes=[3e3], isoflop__budgets=[2e8])  # one run
    command = ["sweep", "run", str(write_spec(tmp_path, spec)), "--sweep-dir", str(tmp_path / "sweep"), "--quiet"]
    assert main(command) == 0
    assert "sweep micro: 1 run(s) trained, 0 already done" in capsys.readouterr().out
    run_dir = tmp_path / "sweep" / "runs" / make_plan(spec_from_dict(spec)).runs[0].name
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    (run_dir / "result.json").unlink()  # as if it crashed before committing its row
    assert main(command) == 0
    assert (
        "sweep micro: 0 run(s) trained, 1 recorded from their last checkpoint, 0 already done"
        in capsys.readouterr().out
    )
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == steps  # no step trained again
    assert len(read_csv(tmp_path / "sweep" / RESULTS_CSV)) == 1
