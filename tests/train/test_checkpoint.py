"""The checkpoint store: corrupt-checkpoint fallback, config checks, re-sharding, --init-from, save cadence."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from scalelab.cli import main
from scalelab.model.config import ConfigError
from scalelab.train import loop
from scalelab.train.checkpoint_compat import CheckpointError, checkpoint_meta, data_reference
from scalelab.train.checkpoint_params import load_params
from scalelab.train.checkpoint_store import CheckpointStore, saved_steps
from scalelab.train.config_io import load_config
from scalelab.train.faults import Preempted
from scalelab.train.loop import train
from scalelab.train.manifest import MANIFEST
from scalelab.train.metrics import read_metrics
from scalelab.train.trainer import Trainer
from tests.train.ckpt_support import (
    FAST,
    assert_states_equal,
    compile_cache,
    exact_metrics,
    flat_arrays,
    saved_state,
    shared_cache_dir,
)

BASE = [*FAST, "train.steps=12", "train.eval_every=4", "checkpoint.every=4", "checkpoint.keep=3"]
RESHARDED = ["mesh.data=2", "mesh.tensor=2", "mesh.pipeline=2"]  # from data=8


@pytest.fixture(scope="module", autouse=True)
def _shared_compiles(tmp_path_factory):
    with compile_cache(shared_cache_dir(tmp_path_factory)):
        yield


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """An uninterrupted 12-step run with checkpoints at steps 4, 8 and 12."""
    run = tmp_path_factory.mktemp("base")
    train(load_config("gpt-tiny", BASE), run, quiet=True)
    assert saved_steps(run / "checkpoints") == [4, 8, 12]
    return run


def clone(run: Path, dest: Path) -> Path:
    """A copy of a run directory to damage or extend."""
    shutil.copytree(run, dest)
    return dest


def largest_file(directory: Path) -> Path:
    """The biggest file under `directory`: array data, not metadata."""
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no manifest"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(base_run, tmp_path, capsys, damage):
    run = clone(base_run, tmp_path / "run")
    root = run / "checkpoints"
    final = saved_state(root / "12")
    victim = largest_file(root / "12" / "state")
    data = bytearray(victim.read_bytes())
    if damage == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(data)
    else:
        (root / "12" / MANIFEST).unlink()

    train(load_config("gpt-tiny", BASE), run, quiet=True)
    err = capsys.readouterr().err
    assert f"checkpoint step 12 ({root / '12'}) is corrupt" in err
    assert f"using step 8 ({root / '8'}) instead" in err
    assert (run / "checkpoints-corrupt" / "12").is_dir()
    # Steps 8..11 were trained again, exactly as the first time.
    assert saved_steps(root) == [4, 8, 12]
    assert_states_equal(saved_state(root / "12"), final)
    assert exact_metrics(run) == exact_metrics(base_run)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.d_model=128", r"model\.d_model: checkpoint 64, config 128 \| arrays: .*checkpoint \(256, 64\) float32"),
        ("model.activation=relu", r"model\.activation: checkpoint 'gelu', config 'relu'"),
        ("optimizer.clip_norm=null", r"optimizer\.clip_norm: checkpoint 1\.0, config None \| arrays: opt_state\."),
    ],
)
def test_incompatible_config_is_an_error_naming_the_fields(base_run, override, named):
    with pytest.raises(CheckpointError, match=named) as error:
        train(load_config("gpt-tiny", [*BASE, override]), base_run, quiet=True)
    # --init-from seeds a new run with the parameters only when they still fit the model
    assert ("with --init-from to start from its parameters" in str(error.value)) == (override != "model.d_model=128")
    assert str(error.value).endswith("start a new run in another --run-dir") == (override == "model.d_model=128")
    assert saved_steps(base_run / "checkpoints") == [4, 8, 12]


def test_cli_reports_an_incompatible_checkpoint_with_status_2(base_run, capsys):
    argv = ["train", "gpt-tiny", "--run-dir", str(base_run), "--quiet", "--set", "model.n_layers=3"]
    for override in BASE:
        argv += ["--set", override]
    assert main(argv) == 2
    assert "model.n_layers: checkpoint 2, config 3" in capsys.readouterr().err


def test_checkpointing_off_refuses_a_run_dir_that_holds_checkpoints(base_run):
    with pytest.raises(CheckpointError, match=r"checkpointing is off.*--set checkpoint\.every=N"):
        train(load_config("gpt-tiny", [*BASE, "checkpoint.every=0"]), base_run, quiet=True)
    assert saved_steps(base_run / "checkpoints") == [4, 8, 12]


def test_restore_onto_another_mesh_and_train_on(base_run, tmp_path):
    run = clone(base_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "12")
    cfg = load_config("gpt-tiny", [*BASE, *RESHARDED])
    store = CheckpointStore(run, cfg, Trainer.build(cfg))
    restored = store.restore_latest()
    store.close()
    assert restored.step == 8
    wq = restored.state["params"]["layers"]["blocks"]["attn"]["wq"]
    assert wq.sharding.spec == jax.sharding.PartitionSpec("pipeline", None, "tensor", None)
    # Re-sharding moves the values and changes nothing else.
    assert_states_equal(flat_arrays(restored.state), saved_state(run / "checkpoints" / "8"))

    train(cfg, run, quiet=True)
    before, after = exact_metrics(base_run), exact_metrics(run)
    assert [r["step"] for r in after] == [r["step"] for r in before]
    kept = [r for r in before if r["step"] < 8]
    assert after[: len(kept)] == kept  # lines before the checkpoint stay as they were
    resumed = [r["loss"] for r in after[len(kept) :] if "loss" in r]
    np.testing.assert_allclose(resumed, [r["loss"] for r in before[len(kept) :] if "loss" in r], rtol=2e-2)
    assert saved_steps(run / "checkpoints") == [4, 8, 12]


def test_a_resume_with_changed_settings_warns_and_a_continued_run_says_whose_it_is(base_run, tmp_path, capsys):
    def resume(run: Path, overrides: list[str]) -> tuple[str, str]:
        shutil.rmtree(run / "checkpoints" / "12")
        train(load_config("gpt-tiny", [*BASE, *overrides]), run, quiet=False)
        captured = capsys.readouterr()
        return captured.out, captured.err

    out, err = resume(clone(base_run, tmp_path / "same"), ["optimizer.lr=0.002"])
    assert "resuming from step 8 " in out
    assert "resuming from" in err and "with changed settings: optimizer.lr: 0.003 -> 0.002" in err
    # Under another name the checkpoint is another run's (a sweep branch off its trunk): its settings are
    # meant to differ, so no warning, and the run says whose checkpoint it continues.
    out, err = resume(clone(base_run, tmp_path / "branch"), ["optimizer.lr=0.002", "name=branch"])
    assert "continuing run 'gpt-tiny' from step 8 " in out
    assert "changed settings" not in err


def test_init_from_starts_a_fresh_run_from_the_parameters(base_run, tmp_path):
    resharded = load_config("gpt-tiny", [*BASE, "mesh.data=4", "mesh.fsdp=2"])
    params, step_dir = load_params(base_run, resharded, Trainer.build(resharded))
    assert step_dir == (base_run / "checkpoints" / "12").absolute()
    saved = saved_state(step_dir)
    for name, array in flat_arrays(params).items():
        assert array.tobytes() == saved[f"params.{name}"].tobytes(), name

    run = tmp_path / "finetune"
    cfg = load_config("gpt-tiny", BASE)
    train(cfg, run, quiet=True, init_from=base_run)
    first = next(r["loss"] for r in read_metrics(run) if "loss" in r)
    untrained = next(r["loss"] for r in read_metrics(base_run) if "loss" in r)
    assert first < untrained - 0.3  # it starts where the other run ended, not from scratch
    state = saved_state(run / "checkpoints" / "12")
    counts = [value for name, value in state.items() if name.endswith("count")]
    assert counts and all(int(c) == 12 for c in counts)  # a fresh optimizer: 12 updates, not 12 + 12
    assert int(state["step"]) == 12

    # Re-running the same command resumes the fine-tuning run; --init-from is not read again.
    result = train(cfg, run, quiet=True, init_from=tmp_path / "gone")
    assert result.final_loss == [r["loss"] for r in read_metrics(run) if "loss" in r][-1]


def test_init_from_a_different_shape_is_an_error(base_run, tmp_path):
    cfg = load_config("gpt-tiny", [*FAST, "model.n_heads=2"])
    with pytest.raises(CheckpointError, match=r"model\.n_heads: checkpoint 4, config 2 \| arrays: params\.layers"):
        load_params(base_run, cfg, Trainer.build(cfg))
    with pytest.raises(CheckpointError, match="no checkpoints there"):
        load_params(base_run / "metrics.jsonl", cfg, Trainer.build(cfg))
    unsaved = tmp_path / "unsaved"  # a run trained with checkpoints off: its directory has no checkpoints/
    unsaved.mkdir()
    shutil.copy(base_run / "config.yaml", unsaved / "config.yaml")
    with pytest.raises(CheckpointError, match=r"that run saved no checkpoint .* --overwrite --set checkpoint\.every="):
        load_params(unsaved, cfg, Trainer.build(cfg))


@pytest.mark.parametrize(("minutes", "expected"), [(1e-6, [4, 8, 12]), (60.0, [12])])
def test_time_based_saves(tmp_path, minutes, expected):
    timed = ["checkpoint.every=0", f"checkpoint.every_minutes={minutes}", "logging.log_every=4", "checkpoint.keep=5"]
    train(load_config("gpt-tiny", [*BASE, *timed]), tmp_path, quiet=True)
    assert saved_steps(tmp_path / "checkpoints") == expected


def test_requested_steps_are_saved_and_outlive_the_newest_keep(tmp_path):
    # A sweep trunk's branch points: saved off the every-4 cadence, and kept although keep=1.
    requested = ["checkpoint.every=4", "checkpoint.keep=1", "checkpoint.at_steps=[3, 6]"]
    train(load_config("gpt-tiny", [*BASE, *requested]), tmp_path, quiet=True)
    assert saved_steps(tmp_path / "checkpoints") == [3, 6, 12]


def test_requested_steps_alone_turn_checkpointing_on(tmp_path):
    train(load_config("gpt-tiny", [*BASE, "checkpoint.every=0", "checkpoint.at_steps=[5]"]), tmp_path, quiet=True)
    assert saved_steps(tmp_path / "checkpoints") == [5, 12]


def test_keep_best_keeps_the_lowest_eval_losses_besides_the_newest(tmp_path):
    cfg = load_config("gpt-tiny", [*BASE, "checkpoint.keep=1", "checkpoint.keep_best=2"])
    trainer = Trainer.build(cfg)
    store = CheckpointStore(tmp_path, cfg, trainer)
    state = trainer.init_state()
    for step, eval_loss in [(2, 3.0), (4, 1.0), (6, 2.5), (8, 2.0), (10, 2.7)]:
        store.save(step, state, checkpoint_meta(cfg, trainer, step, [], eval_loss, "eval"), eval_loss, wait=False)
    store.close()
    assert saved_steps(tmp_path / "checkpoints") == [4, 8, 10]


def test_each_evaluation_saves_a_checkpoint_when_keeping_the_best(tmp_path):
    # No step interval and a timer that never fires: only the evaluations (and the end) save.
    best_two = ["checkpoint.every=0", "checkpoint.every_minutes=60", "checkpoint.keep=1", "checkpoint.keep_best=2"]
    train(load_config("gpt-tiny", [*BASE, *best_two]), tmp_path, quiet=True)
    evals = {r["step"] + 1: r["eval_loss"] for r in read_metrics(tmp_path) if "eval_loss" in r}
    assert sorted(evals) == [4, 8, 12]
    assert saved_steps(tmp_path / "checkpoints") == sorted({12, *sorted(evals, key=evals.get)[:2]})


def test_tfds_runs_record_their_dataset_and_tokenizer(tmp_path):
    version = tmp_path / "scalelab_text" / "1.0.0"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
    reference = data_reference(load_config("gpt-tiny", ["data.source=tfds", f"data.data_dir={tmp_path}"]))
    assert reference["dataset"] == str(version)
    assert reference["tokenizer"] == str(version / "tokenizers" / "bpe-256")


class SignalAt:
    """A batch source that sends this process SIGTERM when asked for data batch `index` (once)."""

    def __init__(self, source, index: int):
        self.source, self.index, self.sent = source, index, False

    def batch(self, step: int):
        if step == self.index and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's guard: the training runs in this thread
        return self.source.batch(step)

    def eval_batch(self, index: int):
        return self.source.eval_batch(index)


@pytest.mark.parametrize("every", [4, 0])
def test_sigterm_saves_and_stops_cleanly(tmp_path, monkeypatch, capfd, every):
    make_source = loop.make_source
    monkeypatch.setattr(loop, "make_source", lambda *args: SignalAt(make_source(*args), index=5))
    cfg = load_config("gpt-tiny", [*BASE, f"checkpoint.every={every}"])
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match="stopped by SIGTERM after 6 steps; ") as stop:
        train(cfg, tmp_path, quiet=True)
    assert stop.value.step == 6
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == list(range(6))
    notice = capfd.readouterr().err
    if every:
        assert saved_steps(tmp_path / "checkpoints") == [4, 6]
        assert f"newest checkpoint: step 6 in {tmp_path / 'checkpoints'}" in str(stop.value)
        assert "SIGTERM: saving a checkpoint and stopping" in notice
    else:
        assert not (tmp_path / "checkpoints").exists()
        assert "checkpointing is off (checkpoint.every=0), so nothing was saved; re-run with --overwrite" in str(
            stop.value
        )
        assert "SIGTERM: stopping (checkpointing is off: nothing to save)" in notice
        with pytest.raises(ConfigError, match="add --overwrite"):  # a plain re-run of the command is refused
            train(cfg, tmp_path, quiet=True, existing="refuse")
    assert signal.getsignal(signal.SIGTERM) is handler  # the guard put the previous handler back


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.nan_policy=rollback"], "train.nan_policy=rollback needs checkpoints"),
        (["checkpoint.every=4", "checkpoint.keep_best=1", "train.eval_every=0"], "checkpoint.keep_best ranks"),
        (["checkpoint.every_minutes=0"], "checkpoint.every_minutes must be positive"),
        (["checkpoint.keep_best=-1"], "checkpoint.keep_best must be >= 0"),
        (["train.max_rollbacks=-1"], "train.max_rollbacks must be >= 0"),
        (["checkpoint.at_steps=[0]"], r"checkpoint\.at_steps holds step counts \(whole numbers > 0\), got \[0\]"),
        (["train.steps=30", "checkpoint.at_steps=[4, 31]"], r"after step 31, past the end of training"),
        (["train.inject_nan_batches=5"], "train.inject_nan_batches: expected a list, got int 5"),
        (["train.inject_nan_batches=[-1]"], "train.inject_nan_batches holds data batch indices"),
        (["train.inject_nan_batches=[x]"], r"train\.inject_nan_batches\[0\]: expected int"),
    ],
)
def test_checkpoint_and_fault_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("gpt-tiny", overrides)
