"""Every family trains through the same loop, objectives, meshes and data as GPT."""

from __future__ import annotations

import functools
import math
import shutil

import jax
import numpy as np
import pytest

from scalelab.cli import main
from scalelab.data import make_source
from scalelab.data.objectives import with_objective
from scalelab.data.synthetic import MarkovSource
from scalelab.model.config import ConfigError
from scalelab.train.config import Config
from scalelab.train.config_io import config_from_dict, load_config
from scalelab.train.loop import train
from scalelab.train.metrics import read_metrics
from scalelab.train.trainer import Trainer
from tests.data.conftest import SENTINELS, VOCAB, make_documents, write_jsonl
from tests.train.ckpt_support import assert_states_equal, compile_cache, exact_metrics, saved_state
from tests.xla_flags import QUICK_BUILD_OPTIONS

FAST = ["logging.progress=false", "logging.tensorboard=false", "logging.peak_flops=1e12"]


def _train_losses(cfg: Config, devices: list[jax.Device] | None = None) -> np.ndarray:
    """Per-step losses of cfg.train.steps steps, fed as the loop feeds them."""
    trainer = Trainer.build(cfg, devices)
    source = make_source(cfg, *trainer.data_shard())
    state = trainer.init_state()  # the same values on every mesh: random draws do not depend on sharding
    trainer.compile(state, trainer.put_batch(source.batch(0)), QUICK_BUILD_OPTIONS)
    losses = []
    for step in range(cfg.train.steps):
        state, metrics = trainer.train_step(state, trainer.put_batch(source.batch(step)))
        losses.append(float(metrics["loss"]))
    return np.asarray(losses)


def _first_loss(run_dir) -> float:
    return next(r["loss"] for r in read_metrics(run_dir) if "loss" in r)


@pytest.mark.slow
def test_bert_learns_the_synthetic_language_through_the_loop(tmp_path):
    cfg = load_config("bert-tiny", [*FAST, "train.steps=100", "train.eval_every=100"])
    result = train(cfg, tmp_path, quiet=True)
    first = _first_loss(tmp_path)
    assert first == pytest.approx(math.log(cfg.model.vocab_size), rel=0.05)  # untrained: uniform
    assert result.eval_loss < first - 0.3  # MLM learns slowly: only the masked 15% carry a loss


@pytest.mark.slow
def test_t5_learns_through_the_loop_and_an_interrupted_run_resumes_bitwise(tmp_path):
    cfg = load_config("t5-tiny", [*FAST, "train.steps=60", "train.eval_every=30", "checkpoint.every=30"])
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    with compile_cache(tmp_path / "jax-cache"):
        result = train(cfg, whole, quiet=True)
        shutil.copytree(whole, resumed)
        shutil.rmtree(resumed / "checkpoints" / "60")  # as if killed between steps 30 and 60
        train(cfg, resumed, quiet=True)
    first = _first_loss(whole)
    assert first == pytest.approx(math.log(cfg.model.vocab_size), rel=0.05)
    assert result.eval_loss < first - 0.6
    # Span corruption draws new random spans every step: the resumed run drew the same ones.
    assert_states_equal(saved_state(resumed / "checkpoints" / "60"), saved_state(whole / "checkpoints" / "60"))
    assert exact_metrics(resumed) == exact_metrics(whole)


@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory) -> str:
    """A small prepared text dataset with its BPE tokenizer, made by the data CLI."""
    root = tmp_path_factory.mktemp("text")
    docs = write_jsonl(root / "docs.jsonl", make_documents(200))
    flags = ["--set", f"data.data_dir={root / 'data'}", "--set", "data.name=family_text", "--quiet"]
    flags += ["--set", f"data.sentinels={SENTINELS}"]
    assert main(["data", "prepare", str(docs), *flags]) == 0
    assert main(["tokenizer", "train", *flags, "--set", f"model.vocab_size={VOCAB}"]) == 0
    return str(root / "data")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_each_family_learns_real_text(text_dataset, family):
    cfg = config_from_dict(
        {
            "model": {"family": family, "vocab_size": VOCAB, "d_model": 64, "n_layers": 2, "n_heads": 4},
            "data": {"source": "tfds", "name": "family_text", "data_dir": text_dataset, "sentinels": SENTINELS},
            "train": {"steps": 30, "batch_size": 16, "seq_len": 64},
            "optimizer": {"lr": 3e-3},
            "schedule": {"warmup_steps": 5},
            "mesh": {"data": 1},
        }
    )
    losses = _train_losses(cfg, jax.devices()[:1])
    assert losses[0] == pytest.approx(math.log(VOCAB), rel=0.05)
    assert losses[-5:].mean() < losses[0] - 1.0


# 8 heads so tensor parallelism uses all 8 devices; 2 layers per stack so pipeline=2 has one per stage.
FAMILIES = {
    "bert": {
        "family": "bert", "attention": "sparse", "window": 8, "global_tokens": 2, "position": "alibi",
        "norm_position": "post", "norm": "layernorm", "use_bias": True,
    },
    "t5": {
        "family": "t5", "attention": "sliding", "window": 8, "position": "relative",
        "tie_encoder_decoder_embeddings": False,
    },
}  # fmt: skip
MESH_OBJECTIVES = {"bert": "mlm", "t5": "prefix_lm"}  # prefix_lm pads, so the padding masks get sharded too
# Between them the meshes use every axis: data and fsdp split the batch and fsdp the weights too;
# tensor splits heads, MLP and vocabulary; pipeline splits the stacked layers of each stack.
MESHES = {
    "data=2 fsdp=4": {"data": 2, "fsdp": 4},
    "tensor=8": {"data": 1, "tensor": 8},
    "data=4 pipeline=2": {"data": 4, "pipeline": 2, "microbatches": 2},
}


def _mesh_config(family: str, mesh: dict, **model_overrides) -> Config:
    model = {"d_model": 64, "n_layers": 2, "n_heads": 8, "vocab_size": 256, "max_seq_len": 16, "dtype": "float32"}
    return config_from_dict(
        {
            "model": {**model, **FAMILIES[family], **model_overrides},
            "train": {"steps": 3, "batch_size": 16, "seq_len": 16},
            "optimizer": {"lr": 3e-3},
            "schedule": {"warmup_steps": 0},
            "mesh": mesh,
            "objective": {"name": MESH_OBJECTIVES[family]},
        }
    )


@functools.cache
def _single_device(family: str) -> np.ndarray:
    return _train_losses(_mesh_config(family, {"data": 1}), jax.devices()[:1])


@pytest.mark.slow
@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_mesh_trains_each_family_like_one_device(family, mesh):
    reference, losses = _single_device(family), _train_losses(_mesh_config(family, MESHES[mesh]))
    assert reference[-1] < reference[0]
    # fp32: the meshes differ from one device only in the order of floating-point reductions.
    np.testing.assert_allclose(losses, reference, rtol=1e-5)


def test_a_pipelined_t5_needs_stacks_of_equal_depth():
    with pytest.raises(ConfigError, match=r"model.n_decoder_layers \(3\) must equal model.n_layers \(2\)"):
        _mesh_config("t5", {"data": 4, "pipeline": 2}, n_decoder_layers=3)
    assert _mesh_config("t5", {"data": 8}, n_decoder_layers=3).model.decoder_layers == 3


class LabelledSource(MarkovSource):
    """Markov rows labelled by whether their first token is in the upper half of the vocabulary."""

    def _draw(self, stream: int, index: int) -> dict[str, np.ndarray]:
        rows = super()._draw(stream, index)
        return {**rows, "labels": (rows["inputs"][:, 0] >= self.vocab_size // 2).astype(np.int32)}


def test_the_classifier_trains_through_the_objective_and_the_train_step():
    cfg = config_from_dict(
        {
            "model": {"family": "bert", "vocab_size": 64, "d_model": 32, "n_heads": 4, "n_classes": 2},
            "train": {"steps": 40, "batch_size": 16, "seq_len": 8},
            "optimizer": {"lr": 1e-2},
            "schedule": {"warmup_steps": 0},
            "mesh": {"data": 1},
        }
    )
    trainer = Trainer.build(cfg, jax.devices()[:1])
    source = with_objective(cfg, LabelledSource(cfg), 0, 1)
    assert source.batch(0)["targets"].shape == (16, 1)
    state = trainer.init_state()
    trainer.compile(state, trainer.put_batch(source.batch(0)), QUICK_BUILD_OPTIONS)
    losses = []
    for index in range(cfg.train.steps):
        state, metrics = trainer.train_step(state, trainer.put_batch(source.batch(index)))
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(math.log(2), rel=0.1)
    assert np.mean(losses[-5:]) < 0.2
