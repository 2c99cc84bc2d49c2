"""`scalelab train`'s closing report."""

from __future__ import annotations

import jax
import pytest

from scalelab.cli import main
from scalelab.train.loop import RunResult


@pytest.fixture
def trained(monkeypatch):
    """Make `train` return at once, as a finished run of 3 steps."""

    def fake_train(cfg, run_dir, **kwargs):
        return RunResult(run_dir, 3, 1.5, None, None, {})

    monkeypatch.setattr("scalelab.train.loop.train", fake_train)


@pytest.mark.parametrize(("process", "reports"), [(0, True), (1, False)])
def test_only_process_0_prints_done(trained, monkeypatch, capsys, tmp_path, process, reports):
    monkeypatch.setattr(jax, "process_index", lambda: process)
    assert main(["train", "gpt-tiny", "--quiet", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert (f"done: 3 steps, final loss 1.5000; metrics in {tmp_path}/run/metrics.jsonl" in out) == reports
