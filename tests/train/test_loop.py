"""The training loop end to end on the synthetic task."""

import math

import numpy as np
import pytest

from scalelab.data import make_source
from scalelab.train.config_io import load_config
from scalelab.train.loop import train
from scalelab.train.metrics import read_metrics

FAST = ["logging.progress=false", "logging.peak_flops=1e12"]


def test_gpt_tiny_learns_the_synthetic_language(tmp_path):
    cfg = load_config("gpt-tiny", [*FAST, "train.steps=250", "train.eval_every=125"])
    result = train(cfg, tmp_path, quiet=True)
    records = read_metrics(tmp_path)
    train_lines = [r for r in records if "loss" in r]
    first = train_lines[0]["loss"]
    assert first == pytest.approx(math.log(cfg.model.vocab_size), rel=0.05)  # an untrained model is uniform
    floor = make_source(cfg).entropy
    assert result.eval_loss < floor + 0.5 * (first - floor)  # well over half-way to the best possible loss
    assert result.final_loss < first - 2.5


def test_run_directory_holds_config_metrics_and_tensorboard(tmp_path):
    cfg = load_config("gpt-tiny", [*FAST, "train.steps=30", "train.eval_every=15", "schedule.warmup_steps=5"])
    train(cfg, tmp_path, quiet=True)
    assert load_config(tmp_path / "config.yaml") == cfg
    records = read_metrics(tmp_path)
    train_lines = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_lines] == list(range(30))
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "step_time_s", "mfu"):
        assert all(np.isfinite(r[key]) for r in train_lines), key
    assert [r["step"] for r in records if "eval_loss" in r] == [14, 29]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_same_seed_same_losses_and_grad_accumulation_matches(tmp_path):
    base = [*FAST, "train.steps=8", "schedule.warmup_steps=2", "train.eval_every=0", "model.dtype=float32"]

    def losses(run: str, extra: list[str]) -> list[float]:
        train(load_config("gpt-tiny", base + extra), tmp_path / run, quiet=True)
        return [r["loss"] for r in read_metrics(tmp_path / run)]

    a, b = losses("a", []), losses("b", [])
    assert a == b
    accumulated = losses("accum", ["train.grad_accum=2"])
    np.testing.assert_allclose(accumulated, a, rtol=2e-5)
    assert losses("other_seed", ["train.seed=1"]) != a
