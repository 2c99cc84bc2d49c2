"""`sweep status`: each run's state as its directory shows it, without changing anything."""

from __future__ import annotations

import os
import shutil

import pytest

from scalelab.cli import main
from scalelab.scaling.sweep.plan import make_plan
from scalelab.scaling.sweep.results import RESULT_FILE, RESULTS_CSV, read_csv
from scalelab.scaling.sweep.runner import run_sweep
from scalelab.scaling.sweep.spec import spec_from_dict
from scalelab.scaling.sweep.status import format_status, sweep_progress, trained_flops
from scalelab.train.checkpoint_store import CHECKPOINT_DIR, saved_steps
from scalelab.train.faults import lock_holder, lock_run_dir
from tests.scaling.sweep.specs import micro, write_spec

SPEC = micro(isoflop__sizes=[3e3])  # two runs, one per budget


def _files(directory):
    return sorted((str(p.relative_to(directory)), p.stat().st_mtime_ns) for p in directory.rglob("*"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A whole sweep of SPEC, run once."""
    sweep_dir = tmp_path_factory.mktemp("status") / "sweep"
    plan = make_plan(spec_from_dict(SPEC))
    assert not run_sweep(plan, sweep_dir, quiet=True).failed
    return plan, sweep_dir


def test_each_state_is_read_from_the_run_directory(finished, tmp_path):
    plan, original = finished
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(original, sweep_dir)
    first, second = plan.runs
    states, _ = sweep_progress(plan, sweep_dir, plan.runs)
    rows = {row["run"]: row for row in read_csv(sweep_dir / RESULTS_CSV)}
    assert [s.state for s in states] == ["done", "done"]
    assert states[0].loss.startswith(f"{float(rows[first.name]['final_loss']):.4f} (eval ")
    assert trained_flops(plan, plan.runs, states, []) == pytest.approx(plan.trained_flops)

    second_dir = sweep_dir / "runs" / second.name
    (second_dir / RESULT_FILE).unlink()  # its last checkpoint is there: the next sweep run only records it
    assert sweep_progress(plan, sweep_dir, plan.runs)[0][1].state == "trained"

    saved = saved_steps(second_dir / CHECKPOINT_DIR)
    shutil.rmtree(second_dir / CHECKPOINT_DIR / str(saved[-1]))  # stopped before its last step was saved
    stopped = sweep_progress(plan, sweep_dir, plan.runs)[0][1]
    assert (stopped.state, stopped.checkpoint, stopped.logged) == ("stopped", saved[-2], second.steps)
    assert stopped.note == f"resumes from checkpoint {saved[-2]}"
    assert 0 < trained_flops(plan, plan.runs, [states[0], stopped], []) <= plan.trained_flops

    fd = lock_run_dir(second_dir)  # a trainer holds it, as while the sweep trains it
    try:
        running = sweep_progress(plan, sweep_dir, plan.runs)[0][1]
        assert running.state == "running" and running.note.startswith(f"trained by PID {os.getpid()} on ")
    finally:
        os.close(fd)
    assert lock_holder(second_dir) is None

    shutil.rmtree(second_dir)
    assert sweep_progress(plan, sweep_dir, plan.runs)[0][1].state == "not started"


def test_the_command_prints_a_line_per_run_and_changes_nothing(finished, tmp_path, capsys):
    plan, original = finished
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(original, sweep_dir)
    shutil.rmtree(sweep_dir / "runs" / plan.runs[1].name)
    spec = write_spec(tmp_path, SPEC)
    before = _files(sweep_dir)
    assert main(["sweep", "status", str(spec), "--sweep-dir", str(sweep_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    share = plan.runs[0].flops / plan.total_flops
    assert lines[0] == (
        f"sweep micro in {sweep_dir}: 1 of 2 run(s) done, 1 not started; {plan.runs[0].flops:.3g} of "
        f"{plan.total_flops:.3g} FLOPs to train are trained ({share:.0%})"
    )
    assert lines[1].split() == ["run", "N", "D", "state", "steps", "loss", "next"]
    assert lines[2].split()[0] == plan.runs[0].name and "done" in lines[2]
    assert lines[3].split()[0] == plan.runs[1].name and f"not started  0/{plan.runs[1].steps}" in lines[3]
    assert _files(sweep_dir) == before  # read only: nothing written, nothing touched


def test_a_missing_sweep_dir_shows_every_run_not_started_and_another_specs_dir_is_named(finished, tmp_path, capsys):
    _, original = finished
    spec = write_spec(tmp_path, SPEC)
    assert main(["sweep", "status", str(spec), "--sweep-dir", str(tmp_path / "nothing")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'nothing'} (not there yet: nothing has run): 0 of 2 run(s) done, 2 not started" in out
    assert not (tmp_path / "nothing").exists()

    other = write_spec(tmp_path, micro(isoflop__sizes=[1.2e4]), "other.yaml")  # plans none of these runs
    assert main(["sweep", "status", str(other), "--sweep-dir", str(original)]) == 2
    assert "finished run(s) that spec 'micro' does not plan" in capsys.readouterr().err


def test_a_branched_sweep_shows_its_trunks(tmp_path):
    spec = micro(
        isoflop__budgets=[1e8, 2e8, 4e8],
        isoflop__sizes=[3e3],
        branches={"cooldown_fraction": 0.25},
        rules__warmup_tokens_per_param=0.5,
    )
    plan = make_plan(spec_from_dict(spec))
    text = format_status(plan, tmp_path / "sweep", plan.runs)
    (trunk,) = plan.trunks
    first = plan.runs[0]
    assert f"not started  0/{first.steps}" in text and f"branches off {trunk.name} at step {first.branch_step}" in text
    assert text.splitlines()[-2].split() == ["trunk", "state", "steps", "next"]
    assert text.splitlines()[-1].split() == [trunk.name, "not", "started", f"0/{trunk.steps}"]


def test_a_finished_shard_points_to_the_status_and_the_last_one_to_the_fit(tmp_path, capsys):
    spec, sweep_dir = write_spec(tmp_path, SPEC), tmp_path / "sweep"
    command = ["sweep", "run", str(spec), "--sweep-dir", str(sweep_dir), "--quiet"]
    assert main([*command, "--shard", "0/2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"1 of the sweep's 2 runs have no row yet (other shards'); scalelab sweep status {spec} --sweep-dir "
        f"{sweep_dir} shows where each stands"
    )
    assert main([*command, "--shard", "1/2"]) == 0
    assert (
        capsys.readouterr().out.splitlines()[-1]
        == f"next: scalelab fit {sweep_dir}, then scalelab plot {sweep_dir / 'fit'}"
    )
