"""Runs of each kind where a post-training stage starts or takes its reference: a reward model is refused where
a policy belongs, and a run whose checkpoint carries a scalar head (reward, PPO) gives its decoder."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from scalelab.cli import main
from scalelab.inference.generate import load_run
from scalelab.posttrain.heads import HEAD
from scalelab.posttrain.ppo import PPOLearner
from scalelab.posttrain.ppo_run import run_ppo
from scalelab.posttrain.runs import (
    WrongRunKindError,
    check_init_from,
    check_reference_run,
    refuse_another_stage,
    run_stage,
)
from scalelab.posttrain.stages import RewardStage
from scalelab.train.checkpoint_store import CHECKPOINT_DIR, run_root, saved_steps
from scalelab.train.config_io import save_config
from scalelab.train.faults import Preempted
from scalelab.train.loop import train
from scalelab.train.metrics import read_metrics
from scalelab.train.trainer import Trainer
from tests.posttrain.conftest import sft_rows, stage_cfg, write_lines
from tests.posttrain.test_ppo_run import PPO
from tests.train.ckpt_support import compile_cache


def test_a_run_is_known_by_its_directory_its_checkpoints_or_one_step(reward_run, text_base):
    rm, _ = reward_run
    step = sorted((rm / CHECKPOINT_DIR).iterdir())[-1]
    assert [run_root(p) for p in (rm, rm / CHECKPOINT_DIR, step)] == [rm, rm, rm]
    assert [run_stage(p) for p in (rm, step, text_base[1])] == ["reward", "reward", "pretrain"]
    assert run_stage(rm.parent) is None


@pytest.mark.parametrize("stage", ["sft", "dpo", "ppo"])
def test_a_reward_model_is_refused_as_a_policy_start_or_reference(reward_run, text_base, stage):
    rm, _ = reward_run
    with pytest.raises(WrongRunKindError, match=rf"--init-from {rm} is a reward-model run .*start {stage.upper()}"):
        check_init_from(stage, rm)
    with pytest.raises(WrongRunKindError, match=r"posttrain.reference=.* is a reward-model run .*the SFT run"):
        check_reference_run(rm)
    check_init_from(stage, text_base[1])  # a pre-trained run is what a policy starts from
    check_init_from("reward", rm)  # a reward model may continue from another


def test_sft_refuses_a_reward_model_before_training(reward_run, text_base, tmp_path):
    base, _ = text_base
    rm, _ = reward_run
    data = write_lines(tmp_path / "sft.jsonl", sft_rows(20))
    cfg = stage_cfg(base, "posttrain.stage=sft", f"posttrain.train_file={data}", "train.steps=2")
    with pytest.raises(WrongRunKindError, match="start SFT from a pre-trained run"):
        train(cfg, tmp_path / "sft", quiet=True, init_from=rm)
    assert not (tmp_path / "sft" / "metrics.jsonl").exists()


def test_a_reward_model_continued_from_another_keeps_its_head(reward_run, text_base):
    base, _ = text_base
    rm, pairs = reward_run
    cfg = stage_cfg(base, "posttrain.stage=reward", f"posttrain.train_file={pairs}", "train.batch_size=8")
    params = RewardStage().init_params(cfg, Trainer.build(cfg), rm)
    stored = load_run(rm).params
    np.testing.assert_array_equal(np.asarray(params[HEAD]["kernel"]), np.asarray(stored[HEAD]["kernel"]))
    np.testing.assert_array_equal(np.asarray(params["embed"]), np.asarray(stored["embed"]))


def test_ppo_starts_from_and_against_an_earlier_ppo_run(reward_run, text_base, tmp_path):
    base, pretrained = text_base
    rm, _ = reward_run
    prompts = write_lines(tmp_path / "prompts.jsonl", [{"prompt": f"the {w} was"} for w in ("sun", "rain")])
    sets = [*PPO, f"posttrain.ppo.reward_model={rm}", f"posttrain.train_file={prompts}", "train.steps=1"]
    with compile_cache(tmp_path / "jax-cache"):
        run_ppo(stage_cfg(base, *sets, "checkpoint.every=1"), tmp_path / "first", init_from=pretrained)
        again = stage_cfg(base, *sets, f"posttrain.reference={tmp_path / 'first'}")
        result = run_ppo(again, tmp_path / "second", init_from=tmp_path / "first")
    # The second run's policy starts as its reference (the first run's policy, value head left behind).
    assert result.final["kl"] == pytest.approx(0.0, abs=1e-4)
    assert [r["step"] for r in read_metrics(tmp_path / "second")] == [0]


@pytest.mark.parametrize("command", ["dpo", "ppo"])
def test_a_stage_command_refuses_the_run_directory_of_another_stage(text_base, tmp_path, capsys, command):
    base, _ = text_base
    held = tmp_path / "sft-run"  # a finished SFT run: re-running a command resumes, so dpo would continue it
    held.mkdir()
    save_config(stage_cfg(base, "posttrain.stage=sft"), held / "config.yaml")
    before = (held / "config.yaml").read_text()
    save_config(stage_cfg(base), tmp_path / "base.yaml")
    args = [command, str(tmp_path / "base.yaml"), "--run-dir", str(held), "--set", "posttrain.train_file=x.jsonl"]
    assert main(args) == 2
    assert f"--run-dir {held} holds an SFT run (posttrain.stage=sft)" in capsys.readouterr().err
    assert (held / "config.yaml").read_text() == before  # the SFT run is untouched
    assert main([*args, "--set", "posttrain.stage=sft"]) == 2
    assert (
        f"scalelab {command} trains posttrain.stage={command}, but --set posttrain.stage=sft" in capsys.readouterr().err
    )


def test_train_with_a_pretrain_config_refuses_a_post_training_run_directory(text_base, tmp_path, capsys):
    base, _ = text_base
    held = tmp_path / "sft-run"
    held.mkdir()
    save_config(stage_cfg(base, "posttrain.stage=sft"), held / "config.yaml")
    before = (held / "config.yaml").read_text()
    save_config(stage_cfg(base), tmp_path / "base.yaml")
    assert main(["train", str(tmp_path / "base.yaml"), "--run-dir", str(held)]) == 2
    err = capsys.readouterr().err
    assert f"--run-dir {held} holds an SFT run (posttrain.stage=sft), not a pretrain run" in err
    assert f"`scalelab train {held / 'config.yaml'} --run-dir {held}` resumes it" in err
    assert (held / "config.yaml").read_text() == before
    refuse_another_stage(held, "sft", overwrite=False)  # the run's own config.yaml is what resumes it


def test_ctrl_c_in_ppo_saves_the_step_it_finished_and_names_ppo(reward_run, text_base, tmp_path, monkeypatch, capfd):
    base, pretrained = text_base
    rm, _ = reward_run
    prompts = write_lines(tmp_path / "prompts.jsonl", [{"prompt": "the sun was"}])
    sets = [*PPO, f"posttrain.ppo.reward_model={rm}", f"posttrain.train_file={prompts}", "train.steps=3"]
    original = PPOLearner.step

    def step_then_ctrl_c(self, *args):  # Ctrl-C lands while the first step runs
        signal.raise_signal(signal.SIGINT)
        monkeypatch.setattr(PPOLearner, "step", original)
        return original(self, *args)

    monkeypatch.setattr(PPOLearner, "step", step_then_ctrl_c)
    with compile_cache(tmp_path / "jax-cache"), pytest.raises(Preempted, match="after 1 steps; re-run to resume"):
        run_ppo(stage_cfg(base, *sets, "checkpoint.every=10"), tmp_path / "ppo", init_from=pretrained)
    assert "scalelab ppo: SIGINT: saving a checkpoint" in capfd.readouterr().err
    assert saved_steps(tmp_path / "ppo" / CHECKPOINT_DIR) == [1]
    assert [r["step"] for r in read_metrics(tmp_path / "ppo")] == [0]


def test_ctrl_c_in_sft_names_sft_not_train(text_base, tmp_path, monkeypatch, capfd):
    base, pretrained = text_base
    data = write_lines(tmp_path / "sft.jsonl", sft_rows(20))
    cfg = stage_cfg(base, "posttrain.stage=sft", f"posttrain.train_file={data}", "train.steps=2", "checkpoint.every=0")
    monkeypatch.setattr("scalelab.train.loop.check_same_config", lambda cfg: signal.raise_signal(signal.SIGINT))
    with compile_cache(tmp_path / "jax-cache"), pytest.raises(Preempted, match="after 0 steps"):
        train(cfg, tmp_path / "sft", quiet=True, init_from=pretrained)
    assert "scalelab sft: SIGINT: stopping (checkpointing is off: nothing to save)" in capfd.readouterr().err


def test_eval_of_a_reward_model_gives_the_loss_and_accuracy_its_run_logged(reward_run, capsys):
    rm, _ = reward_run
    logged = [r for r in read_metrics(rm) if "eval_loss" in r][-1]
    assert main(["eval", str(rm), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == logged["step"] + 1
    for key in ("eval_loss", "eval_accuracy"):
        assert report[key] == pytest.approx(logged[key], rel=1e-5), key
