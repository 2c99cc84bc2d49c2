"""SFT, reward model and DPO as ordinary training runs: metrics, generate on the result, kill -9 exact resume,
the SFT target, learning."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from scalelab.cli import main
from scalelab.posttrain.demo_judge import sft_target
from scalelab.posttrain.reference import ReferenceMismatchError
from scalelab.train.checkpoint_store import CHECKPOINT_DIR
from scalelab.train.loop import train
from scalelab.train.metrics import read_metrics
from tests.posttrain.conftest import FAST, MODEL, sft_rows, stage_cfg, write_lines
from tests.train.ckpt_support import assert_states_equal, compile_cache, exact_metrics, saved_state
from tests.train.test_checkpoint_resume import SCALELAB, TIMEOUT_S, freeze, newest, wait_for

STEPS = 6


@pytest.fixture(scope="module")
def sft_run(text_base, tmp_path_factory):
    """`scalelab sft` from the pre-trained run: 6 steps, evals after steps 3 and 6, checkpoints at 2, 4 and 6."""
    base, pretrained = text_base
    root = tmp_path_factory.mktemp("sft")
    data = write_lines(root / "sft.jsonl", sft_rows(60))
    run_dir, config = root / "run", root / "sft.yaml"
    from scalelab.train.config_io import save_config

    save_config(stage_cfg(base, "posttrain.stage=sft"), config)
    sets = [*FAST, *MODEL, f"posttrain.train_file={data}", f"train.steps={STEPS}", "train.eval_every=3"]
    sets += ["checkpoint.every=2", "schedule.warmup_steps=1", "optimizer.lr=3e-3", "train.batch_size=8"]
    args = ["sft", str(config), "--run-dir", str(run_dir), "--init-from", str(pretrained), "--quiet"]
    for s in sets:
        args += ["--set", s]
    with compile_cache(root / "jax-cache"):  # the kill -9 test's subprocesses load these programs
        assert main(args) == 0
    return args, run_dir


def test_sft_reports_completion_loss_and_accuracy_meets_its_target_and_generate_reads_its_run(
    sft_run, text_base, capsys
):
    _, run_dir = sft_run
    records = read_metrics(run_dir)
    train_lines = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train_lines] == list(range(STEPS))
    assert [r["step"] for r in evals] == [2, 5]
    assert all(0.0 <= r["eval_accuracy"] <= 1.0 for r in evals)
    # The SFT target: the fine-tuned run's held-out completion loss is below the pre-trained run's.
    target = sft_target(text_base[1], run_dir)
    assert target["heldout_examples"] > 0 and target["completion_tokens"] >= 2 * target["heldout_examples"]
    assert np.isfinite(target["pretrained_loss"]) and target["sft_loss"] < target["pretrained_loss"] - 0.1
    assert target["met"]
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", "say good:", "--max-new-tokens", "4"]) == 0
    assert "say good:" in capsys.readouterr().out


def test_sft_killed_with_sigkill_resumes_to_the_uninterrupted_run(sft_run, tmp_path):
    """The fixture's command in a subprocess, SIGKILLed after a committed checkpoint, then run again: the
    final state and every metrics line equal the uninterrupted run's, bit for bit."""
    args, run_dir = sft_run
    killed = tmp_path / "run"
    command = [str(SCALELAB), *(str(killed) if a == str(run_dir) else a for a in args)]
    env = {  # the fixture's compiled programs, loaded instead of compiled again
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(run_dir.parent / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    root = killed / CHECKPOINT_DIR
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_for(lambda: newest(root) >= 2, proc, "the first checkpoint")
    freeze(proc)  # stopped, it cannot finish between our look and the kill
    assert newest(root) < STEPS, "the run finished before it could be killed"
    proc.kill()
    proc.wait()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert newest(root) == STEPS
    assert_states_equal(saved_state(root / str(STEPS)), saved_state(run_dir / CHECKPOINT_DIR / str(STEPS)))
    assert exact_metrics(killed) == exact_metrics(run_dir)


def test_reward_model_learns_a_separable_preference(reward_run):
    (last,) = [r for r in read_metrics(reward_run[0]) if "eval_loss" in r]
    assert last["eval_accuracy"] == 1.0 and last["eval_loss"] < 0.5


def test_dpo_raises_the_chosen_margin_and_refuses_a_mismatched_reference(sft_run, text_base, reward_run, tmp_path):
    base, _ = text_base
    _, sft_dir = sft_run
    pairs = reward_run[1]
    sets = [f"posttrain.train_file={pairs}", "posttrain.stage=dpo", "train.steps=8", "train.eval_every=8"]
    sets += ["train.batch_size=8", "optimizer.lr=3e-3", "schedule.warmup_steps=1", f"posttrain.reference={sft_dir}"]
    result = train(stage_cfg(base, *sets), tmp_path / "dpo", quiet=True, init_from=sft_dir)
    lines = [r for r in read_metrics(tmp_path / "dpo") if "loss" in r]
    assert lines[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-3)  # the policy starts as its reference
    (last,) = [r for r in read_metrics(tmp_path / "dpo") if "eval_loss" in r]
    assert last["eval_reward_margin"] > 0 and last["eval_accuracy"] > 0.5 and result.eval_loss < np.log(2.0)
    with pytest.raises(ReferenceMismatchError, match=r"model.d_model: policy 64, reference 32"):
        train(stage_cfg(base, *sets, "model.d_model=64"), tmp_path / "bad", quiet=True)
