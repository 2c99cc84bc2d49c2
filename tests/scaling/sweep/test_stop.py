"""A signal stops a sweep with the "try again" status wherever it lands: mid-run, after a run's last step, between runs."""

from __future__ import annotations

import signal

import pytest

from scalelab.cli import main
from scalelab.scaling.sweep import runner
from scalelab.scaling.sweep.plan import make_plan
from scalelab.scaling.sweep.results import RESULTS_CSV, read_csv, read_result
from scalelab.scaling.sweep.spec import spec_from_dict
from scalelab.train.faults import EXIT_PREEMPTED, PreemptionGuard
from tests.scaling.sweep.specs import micro, write_spec

SPEC = micro(isoflop__sizes=[3e3])  # two runs, one per budget


def _signal_after_the_last_step(monkeypatch, signum: int) -> list[str]:
    """Make the first trained run end with `signum` delivered inside its own guard, after its last step."""
    trained: list[str] = []
    real_train = runner.train

    def train_then_signal(config, run_dir, quiet):
        with PreemptionGuard():  # as the run's own guard is during its final save
            real_train(config, run_dir, quiet=quiet)
            trained.append(run_dir.name)
            if len(trained) == 1:
                signal.raise_signal(signum)

    monkeypatch.setattr(runner, "train", train_then_signal)
    return trained


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_after_a_runs_last_step_keeps_its_row_and_stops_with_75(tmp_path, monkeypatch, capsys, signum):
    path = write_spec(tmp_path, SPEC)
    names = [run.name for run in make_plan(spec_from_dict(SPEC)).runs]
    trained = _signal_after_the_last_step(monkeypatch, signum)
    status = main(["sweep", "run", str(path), "--sweep-dir", str(tmp_path / "sweep"), "--quiet"])
    err = capsys.readouterr().err
    assert status == EXIT_PREEMPTED, err
    assert trained == names[:1]  # the second run never started
    rows = read_csv(tmp_path / "sweep" / RESULTS_CSV)
    assert [row["run"] for row in rows] == names[:1]  # the first one's row is kept
    name = signal.Signals(signum).name
    assert f"scalelab sweep: stopped by {name} between runs; 1 of 2 run(s) finished and kept" in err
    assert "run the same command again to resume the rest" in err

    again = main(["sweep", "run", str(path), "--sweep-dir", str(tmp_path / "sweep"), "--quiet"])
    assert again == 0 and trained == names  # the rerun trains only the second run
    assert [row["run"] for row in read_csv(tmp_path / "sweep" / RESULTS_CSV)] == names


def test_a_signal_during_a_run_saves_it_and_the_stop_names_the_run_and_the_progress(tmp_path, monkeypatch, capsys):
    path = write_spec(tmp_path, SPEC)
    first = make_plan(spec_from_dict(SPEC)).runs[0].name
    real_train = runner.train

    def signal_then_train(config, run_dir, quiet):
        with PreemptionGuard():  # a signal while the run builds: it stops at its first step, saved
            signal.raise_signal(signal.SIGTERM)
            real_train(config, run_dir, quiet=quiet)

    monkeypatch.setattr(runner, "train", signal_then_train)
    assert main(["sweep", "run", str(path), "--sweep-dir", str(tmp_path / "sweep"), "--quiet"]) == EXIT_PREEMPTED
    err = capsys.readouterr().err
    assert f"scalelab sweep: run {first} stopped by SIGTERM after 0 steps; newest checkpoint: step 0" in err
    assert "0 of 2 run(s) finished and kept; run the same command again to resume the rest" in err
    assert read_result(tmp_path / "sweep" / "runs" / first) is None


def test_ctrl_c_before_the_sweep_starts_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_sweep", interrupted)
    status = main(["sweep", "run", str(write_spec(tmp_path, SPEC)), "--sweep-dir", str(tmp_path / "sweep")])
    assert status == 130
    assert capsys.readouterr().err.strip() == "scalelab sweep: interrupted (Ctrl-C) before it finished"
