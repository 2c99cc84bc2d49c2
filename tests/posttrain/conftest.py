"""Shared fixtures: a prepared tiny text dataset, its tokenizer and a 4-step pre-trained gpt run to start from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import scalelab.posttrain  # noqa: F401  registers the stages
from scalelab.train.config_io import config_from_dict, to_dict
from tests.data.conftest import VOCAB, make_cfg, make_documents, write_jsonl

FAST = ["logging.progress=false", "logging.peak_flops=1e12", "checkpoint.async_save=false", "logging.tensorboard=false"]
SEQ = 32
MODEL = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", f"model.max_seq_len={SEQ}"]
WORDS = ["good", "bad", "day", "night", "sun", "rain", "walk", "home"]


def base_overrides(data_dir: Path) -> dict:
    """The dict config of the tiny text model (before stage overrides)."""
    return to_dict(make_cfg(data_dir, seq_len=SEQ))


def stage_cfg(base: dict, *overrides: str):
    return config_from_dict(base, [*FAST, *MODEL, *overrides])


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompt 'say W' -> completion 'W W': a task the tiny model can learn from few steps."""
    rng = np.random.default_rng(seed)
    return [{"prompt": f"say {w}:", "completion": f" {w} {w}"} for w in rng.choice(WORDS, n)]


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Trivially separable preferences: the chosen response always says 'good', the rejected 'bad'."""
    rng = np.random.default_rng(seed)
    return [{"prompt": f"the {w} was", "chosen": " good good", "rejected": " bad bad"} for w in rng.choice(WORDS, n)]


@pytest.fixture(scope="session")
def text_base(tmp_path_factory):
    """(base config dict, pre-trained run dir): a tiny gpt trained 4 steps on a prepared text dataset."""
    from scalelab.data.builder import prepare_dataset
    from scalelab.data.tokens import build_store
    from scalelab.train.loop import train

    root = tmp_path_factory.mktemp("posttrain")
    corpus = write_jsonl(root / "corpus" / "docs.jsonl", make_documents(120))
    cfg = make_cfg(root / "data", seq_len=SEQ, corpus=str(corpus))
    prepare_dataset(cfg.data, progress=False)
    build_store(cfg.data, VOCAB, progress=False)
    base = to_dict(cfg)
    run_dir = root / "pretrained"
    overrides = ["train.steps=4", "train.eval_every=0", "schedule.warmup_steps=1", "checkpoint.every=4"]
    train(stage_cfg(base, *overrides), run_dir, quiet=True)
    return base, run_dir


@pytest.fixture(scope="session")
def reward_run(text_base, tmp_path_factory):
    """(reward-model run dir, its pairs file): 30 steps from the pre-trained run on trivially separable pairs.
    The stage tests check that it learned; the PPO tests score rollouts with it."""
    from scalelab.train.loop import train

    base, pretrained = text_base
    root = tmp_path_factory.mktemp("reward")
    pairs = write_lines(root / "pairs.jsonl", pair_rows(60))
    sets = [f"posttrain.train_file={pairs}", "posttrain.stage=reward", "train.steps=30", "train.eval_every=30"]
    sets += ["train.batch_size=8", "optimizer.lr=3e-3", "schedule.warmup_steps=2", "checkpoint.every=30"]
    train(stage_cfg(base, *sets), root / "rm", quiet=True, init_from=pretrained)
    return root / "rm", pairs
