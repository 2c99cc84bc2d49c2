"""A PPO run in the shared machinery: metrics, exact resume from a checkpoint, and its bad inputs."""

import re
import shutil

import numpy as np
import pytest

from scalelab.cli import main
from scalelab.posttrain.ppo_run import NotARewardModelError, run_ppo
from scalelab.posttrain.reference import ReferenceMismatchError
from scalelab.train.checkpoint_store import CHECKPOINT_DIR, saved_steps
from scalelab.train.config_io import save_config
from scalelab.train.metrics import read_metrics
from tests.posttrain.conftest import stage_cfg, write_lines
from tests.train.ckpt_support import compile_cache

PPO = [
    "posttrain.stage=ppo",
    "posttrain.ppo.new_tokens=6",
    "posttrain.ppo.epochs=2",
    "posttrain.ppo.minibatches=2",
    "posttrain.beta=0.05",
    "train.batch_size=8",
    "train.seq_len=24",
    "schedule.name=constant",
    "schedule.warmup_steps=0",
    "optimizer.lr=1e-3",
    "checkpoint.every=2",
]


@pytest.fixture(scope="module")
def ppo_inputs(text_base, reward_run, tmp_path_factory):
    """(base config, the pre-trained run as the SFT policy, the session's reward model run, a prompt file)."""
    base, pretrained = text_base
    root = tmp_path_factory.mktemp("ppo")
    prompts = write_lines(root / "prompts.jsonl", [{"prompt": f"the {w} was"} for w in ("sun", "rain", "day")])
    return base, pretrained, reward_run[0], prompts


def _cfg(ppo_inputs, *extra):
    base, _, rm, prompts = ppo_inputs
    return stage_cfg(base, *PPO, f"posttrain.ppo.reward_model={rm}", f"posttrain.train_file={prompts}", *extra)


def test_ppo_resumes_exactly_and_logs_every_step_once(ppo_inputs, tmp_path):
    with compile_cache(tmp_path / "jax-cache"):  # the resumed run loads the first one's programs
        _resume_exactly(ppo_inputs, tmp_path)


def _resume_exactly(ppo_inputs, tmp_path):
    pretrained = ppo_inputs[1]
    whole = run_ppo(_cfg(ppo_inputs, "train.steps=3", "checkpoint.every=1"), tmp_path / "whole", init_from=pretrained)
    assert saved_steps(tmp_path / "whole" / CHECKPOINT_DIR) == [1, 2, 3]
    # A copy stopped after step 1: its later checkpoints gone, its metrics holding a line its checkpoint lacks.
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    for step in (2, 3):
        shutil.rmtree(tmp_path / "cut" / CHECKPOINT_DIR / str(step))
    resumed = run_ppo(_cfg(ppo_inputs, "train.steps=3", "checkpoint.every=1"), tmp_path / "cut")  # no --init-from
    timing = ("tokens_per_s", "rollout_tokens_per_s", "step_time_s")
    untimed = lambda record: {k: v for k, v in record.items() if k not in timing}  # noqa: E731
    assert untimed(resumed.final) == untimed(whole.final)
    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    assert [r["step"] for r in b] == [0, 1, 2]
    assert [untimed(r) for r in a] == [untimed(r) for r in b]
    for name in ("reward", "kl", "entropy", "clip_fraction", "value_loss", "response_length", "loss", "lr", "beta"):
        assert all(np.isfinite(r[name]) for r in a), name
    assert a[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as its reference
    assert a[-1]["kl"] > 0.0
    config = (tmp_path / "cut" / "config.yaml").read_text()
    assert f"reference: {pretrained}" in config  # --init-from became the frozen reference, so resumes need neither
    # The policy decodes like any run: scalelab generate leaves the value head out.
    assert main(["generate", str(tmp_path / "whole"), "--prompt", "the sun", "--max-new-tokens", "3"]) == 0


def test_ppo_refuses_a_reference_of_another_shape(ppo_inputs, tmp_path):
    base, pretrained, *_ = ppo_inputs
    wider = tmp_path / "wider"  # a run directory whose config describes a wider model
    wider.mkdir()
    save_config(stage_cfg(base, "model.d_model=64"), wider / "config.yaml")
    with pytest.raises(ReferenceMismatchError, match=re.escape("model.d_model: policy 32, reference 64")):
        run_ppo(
            _cfg(ppo_inputs, "train.steps=1", f"posttrain.reference={wider}"), tmp_path / "ppo", init_from=pretrained
        )


def test_ppo_refuses_a_reward_model_that_is_not_one(ppo_inputs, tmp_path):
    pretrained = ppo_inputs[1]
    cfg = _cfg(ppo_inputs, "train.steps=1", f"posttrain.ppo.reward_model={pretrained}")
    with pytest.raises(NotARewardModelError, match=r"is not a reward model \(.*posttrain.stage=pretrain\)"):
        run_ppo(cfg, tmp_path / "ppo", init_from=pretrained)
    assert not (tmp_path / "ppo" / "metrics.jsonl").exists()  # refused before anything was written
