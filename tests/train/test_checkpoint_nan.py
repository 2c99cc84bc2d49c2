"""NaN policies on a batch poisoned with train.inject_nan_batches: stop, skip and rollback do what they say."""

from __future__ import annotations

import math
import shutil

import pytest

from scalelab.train.checkpoint_compat import read_meta
from scalelab.train.checkpoint_store import saved_steps
from scalelab.train.config_io import load_config
from scalelab.train.faults import DataSkips
from scalelab.train.loop import NonFiniteLossError, train
from scalelab.train.metrics import read_metrics
from tests.train.ckpt_support import (
    FAST,
    assert_states_equal,
    compile_cache,
    exact_metrics,
    saved_state,
    shared_cache_dir,
)

BASE = [*FAST, "train.steps=12", "train.eval_every=4", "checkpoint.every=4", "checkpoint.keep=3"]
POISONED = [*BASE, "train.inject_nan_batches=[6]"]


@pytest.fixture(scope="module", autouse=True)
def _shared_compiles(tmp_path_factory):
    with compile_cache(shared_cache_dir(tmp_path_factory)):
        yield


def train_lines(run_dir) -> list[dict]:
    """The train (not eval) lines of a run's metrics."""
    return [r for r in read_metrics(run_dir) if "loss" in r]


def test_stop_raises_naming_the_step_and_saves_nothing_after_it(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step 6 \(data batch 6\): loss nan .* is not finite"):
        train(load_config("gpt-tiny", [*POISONED, "train.nan_policy=stop"]), tmp_path, quiet=True)
    assert saved_steps(tmp_path / "checkpoints") == [4]
    assert [r["step"] for r in train_lines(tmp_path)] == list(range(6))


def test_skip_keeps_parameters_and_optimizer_state_unchanged(tmp_path):
    every_step = ["train.nan_policy=skip", "checkpoint.every=1", "checkpoint.keep=20"]
    train(load_config("gpt-tiny", [*POISONED, *every_step]), tmp_path, quiet=True)
    lines = train_lines(tmp_path)
    assert [r["step"] for r in lines] == list(range(12))
    assert [r["skipped"] for r in lines] == [step == 6 for step in range(12)]
    assert lines[6]["loss"] == "nan"
    assert all(math.isfinite(r["loss"]) for i, r in enumerate(lines) if i != 6)
    before, after = saved_state(tmp_path / "checkpoints" / "6"), saved_state(tmp_path / "checkpoints" / "7")
    assert int(before.pop("step")) + 1 == int(after.pop("step"))  # the step counter moves on ...
    assert_states_equal(before, after)  # ... and nothing else does
    assert before["params.embed"].tobytes() != saved_state(tmp_path / "checkpoints" / "8")["params.embed"].tobytes()


def test_rollback_restores_the_last_checkpoint_and_skips_past_the_bad_batches(tmp_path, capsys):
    cfg = load_config("gpt-tiny", [*POISONED, "train.nan_policy=rollback"])
    train(cfg, tmp_path / "run", quiet=True)
    assert (
        "step 6: non-finite loss (train.nan_policy=rollback); rolled back to checkpoint step 4 and skipping "
        "data batches 4..6 (rollback 1 of at most 3)"
    ) in capsys.readouterr().err
    lines = train_lines(tmp_path / "run")
    assert [r["step"] for r in lines] == list(range(12))  # every step exactly once
    assert [r["data_index"] for r in lines] == [0, 1, 2, 3, *range(7, 15)]
    assert all(math.isfinite(r["loss"]) and not r["skipped"] for r in lines)
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "eval_loss" in r] == [3, 7, 11]
    root = tmp_path / "run" / "checkpoints"
    assert read_meta(root / "8")["data"]["skips"] == [[4, 3]]

    # Resuming after the rollback continues on the same data: from step 8 (which records the
    # skip), and from step 4 (which does not, so the NaN comes back and is rolled back again).
    for keep in (8, 4):
        resumed = tmp_path / f"from-{keep}"
        shutil.copytree(tmp_path / "run", resumed)
        for step in saved_steps(resumed / "checkpoints"):
            if step > keep:
                shutil.rmtree(resumed / "checkpoints" / str(step))
        train(cfg, resumed, quiet=True)
        assert_states_equal(saved_state(resumed / "checkpoints" / "12"), saved_state(root / "12"))
        assert exact_metrics(resumed) == exact_metrics(tmp_path / "run")


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    overrides = ["train.nan_policy=rollback", "train.max_rollbacks=1", "train.inject_nan_batches=[5,9]"]
    with pytest.raises(NonFiniteLossError, match=r"step 7 \(data batch 9\): loss is not finite after 1 rollbacks"):
        train(load_config("gpt-tiny", [*BASE, *overrides]), tmp_path, quiet=True)


def test_data_skips_after_repeated_rollbacks():
    skips = DataSkips().after_rollback(target=4, bad_step=6)
    assert skips.entries == [(4, 3)] and [skips.data_index(s) for s in (3, 4, 5)] == [3, 7, 8]
    # A second bad step (step 5, data batch 8) rolled back to the same checkpoint skips on from there.
    skips = skips.after_rollback(target=4, bad_step=5)
    assert [skips.data_index(s) for s in (3, 4)] == [3, 9]
    # Back to a checkpoint older than a recorded skip: that skip is replaced by one wider skip.
    skips = DataSkips([(4, 3), (8, 2)])
    assert skips.data_index(9) == 14
    wider = skips.after_rollback(target=4, bad_step=9)
    assert wider.entries == [(4, 3), (4, 8)] and wider.data_index(4) == 15
    assert DataSkips.from_json(wider.to_json()) == wider
