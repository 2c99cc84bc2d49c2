"""What `scalelab train` does with a run directory that already holds a run."""

import json

import pytest

from scalelab.cli import main
from scalelab.model.config import ConfigError
from scalelab.train.checkpoint_compat import CheckpointError
from scalelab.train.config_io import load_config
from scalelab.train.loop import train
from scalelab.train.metrics import read_metrics, truncate_metrics

# gpt-tiny on short rows: a run of a few steps takes a few seconds on the CPU.
FAST = [
    "train.seq_len=16",
    "train.eval_batches=1",
    "train.eval_every=0",
    "schedule.warmup_steps=0",
    "logging.progress=false",
    "logging.peak_flops=1e12",
]


def _train_cli(run_dir, *extra):
    args = ["train", "gpt-tiny", "--quiet", "--run-dir", str(run_dir)]
    for override in FAST:
        args += ["--set", override]
    return main([*args, *extra])


def test_a_run_no_checkpoint_resumes_is_refused_until_overwrite_starts_it_over(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train_cli(run, "--set", "train.steps=6") == 0
    before = (run / "metrics.jsonl").read_text(), (run / "config.yaml").read_text()
    old_events = set((run / "tensorboard").iterdir())
    capsys.readouterr()

    assert _train_cli(run, "--set", "train.steps=3", "--set", "model.n_layers=1") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{run} already holds a run ({run}/metrics.jsonl: 6 lines, steps 0..5)" in err
    assert "give another --run-dir" in err and "--overwrite" in err
    assert ((run / "metrics.jsonl").read_text(), (run / "config.yaml").read_text()) == before  # nothing touched

    assert _train_cli(run, "--set", "train.steps=3", "--set", "model.n_layers=1", "--overwrite") == 0
    assert [r["step"] for r in read_metrics(run)] == [0, 1, 2]
    assert load_config(run / "config.yaml").model.n_layers == 1
    assert not old_events & set((run / "tensorboard").iterdir())  # TensorBoard shows only the new run


def test_overwrite_deletes_checkpoints_and_rerunning_a_checkpointed_run_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    saving = ["--set", "checkpoint.every=2", "--set", "logging.tensorboard=false"]
    assert _train_cli(run, *saving, "--set", "train.steps=4") == 0
    assert _train_cli(run, *saving, "--set", "train.steps=6") == 0  # resumes from step 4: not refused
    assert [r["step"] for r in read_metrics(run)] == list(range(6))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4", "6"]

    assert _train_cli(run, *saving, "--set", "train.steps=2", "--overwrite") == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2"]
    assert [r["step"] for r in read_metrics(run)] == [0, 1]


def test_the_python_api_starts_an_unresumable_run_over_by_default(tmp_path):
    # Sweeps own their run directories: a run that crashed before its first checkpoint is retried.
    cfg = load_config("gpt-tiny", [*FAST, "train.steps=3"])
    train(cfg, tmp_path, quiet=True)
    (tmp_path / "tensorboard" / "stale.tfevents").write_text("")
    train(cfg, tmp_path, quiet=True)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    assert not (tmp_path / "tensorboard" / "stale.tfevents").exists()


def test_a_checkpoint_past_train_steps_is_refused(tmp_path):
    saving = [*FAST, "checkpoint.every=2", "logging.tensorboard=false"]
    train(load_config("gpt-tiny", [*saving, "train.steps=4"]), tmp_path, quiet=True)
    with pytest.raises(CheckpointError, match=r"checkpoint at step 4, past train.steps=2; set train.steps to at"):
        train(load_config("gpt-tiny", [*saving, "train.steps=2"]), tmp_path, quiet=True)


def test_a_metrics_line_without_a_step_is_an_error_naming_the_file_and_line(tmp_path):
    lines = [{"step": 0, "loss": 5.0}, {"loss": 4.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ConfigError, match=rf"{tmp_path}/metrics.jsonl line 2 .* has no integer 'step'"):
        truncate_metrics(tmp_path, 1)


def test_init_from_names_a_missing_source_and_a_shape_mismatch_with_advice_that_fits(tmp_path, capsys):
    assert _train_cli(tmp_path / "new", "--set", "train.steps=2", "--init-from", str(tmp_path / "nothere")) == 2
    assert f"--init-from {tmp_path}/nothere does not exist" in capsys.readouterr().err
    source = tmp_path / "source"
    assert _train_cli(source, "--set", "train.steps=2", "--set", "checkpoint.every=2") == 0
    capsys.readouterr()
    args = ["--set", "train.steps=2", "--set", "model.n_layers=1", "--init-from", str(source)]
    assert _train_cli(tmp_path / "new", *args) == 2
    err = capsys.readouterr().err
    assert "model.n_layers: checkpoint 2, config 1" in err
    assert err.endswith("--init-from needs a run whose model has the same shape: give one, or drop --init-from\n")
