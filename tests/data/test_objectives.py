"""Objectives: MLM masking statistics, span-corruption and prefix layouts, the synthetic source's reserved ids,
determinism, validation."""

import re

import numpy as np
import pytest

from scalelab.data import make_source
from scalelab.data.objectives import Draws, corrupt_spans, mask_tokens, model_lengths, special_ids, split_prefix
from scalelab.data.special import MASK_ID, layout
from scalelab.data.synthetic import MarkovSource
from scalelab.model.config import ConfigError, SequenceLengths
from scalelab.train.config_io import config_from_dict, load_config

VOCAB = 256


def _cfg(family: str, objective: str | None = None, batch_size: int = 8, seq_len: int = 64, **settings):
    return config_from_dict(
        {
            "model": {"family": family, "vocab_size": VOCAB, "max_seq_len": seq_len},
            "train": {"batch_size": batch_size, "seq_len": seq_len},
            "objective": {"name": objective, **settings},
        }
    )


def _rows(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """Tokens from 16 up, clear of the reserved ids (2 .. 2 + sentinels) as the synthetic source's are."""
    tokens = 16 + (np.arange(batch_size * seq_len).reshape(batch_size, seq_len) * 7) % 200
    return {"inputs": tokens.astype(np.int32), "weights": np.ones((batch_size, seq_len), np.float32)}


def _draws(cfg, step: int = 0) -> Draws:
    return Draws(cfg.data.seed, 0, step, cfg.train.batch_size, slice(0, cfg.train.batch_size))


def test_mlm_masks_15_percent_with_80_10_10_replacement_and_weights_only_those():
    cfg = _cfg("bert", batch_size=256, seq_len=128)
    raw = MarkovSource(cfg).batch(0)
    assert not (raw["inputs"] == MASK_ID).any()  # the synthetic language leaves [MASK] out
    raw["weights"][:, 100:] = 0.0  # padding is never chosen
    out = mask_tokens(raw, _draws(cfg), cfg, special_ids(cfg))
    chosen = out["weights"] > 0
    np.testing.assert_array_equal(chosen.sum(axis=1), round(0.15 * 100))
    assert not chosen[:, 100:].any()
    np.testing.assert_array_equal(out["targets"], raw["inputs"])
    np.testing.assert_array_equal(out["inputs"][~chosen], raw["inputs"][~chosen])
    masked = out["inputs"][chosen] == MASK_ID
    kept = out["inputs"][chosen] == raw["inputs"][chosen]
    replaced = ~masked & ~kept
    assert abs(masked.mean() - 0.8) < 0.025
    assert abs(kept.mean() - 0.1) < 0.02
    assert abs(replaced.mean() - 0.1) < 0.02
    assert len(np.unique(out["inputs"][chosen][replaced])) > 100  # random tokens span the vocabulary


def test_span_corruption_replaces_spans_by_sentinels_that_the_targets_spell_out():
    cfg = _cfg("t5", batch_size=16, seq_len=64)
    raw = _rows(16, 64)
    out = corrupt_spans(raw, _draws(cfg), cfg, special_ids(cfg))
    noise, spans = round(0.15 * 64), round(round(0.15 * 64) / 3)
    assert out["inputs"].shape == (16, 64 - noise + spans)
    assert out["targets"].shape == (16, noise + spans)
    assert model_lengths(cfg) == SequenceLengths(64 - noise + spans, noise + spans)
    np.testing.assert_array_equal(out["decoder_inputs"][:, 0], 0)
    np.testing.assert_array_equal(out["decoder_inputs"][:, 1:], out["targets"][:, :-1])
    np.testing.assert_array_equal(out["weights"], 1.0)
    sentinels = list(range(3, 3 + spans))  # the fixed layout: [MASK] is 2, sentinel i is 3 + i
    assert special_ids(cfg) == layout(spans)
    layouts = set()
    for inputs, targets, original in zip(out["inputs"], out["targets"], raw["inputs"], strict=True):
        assert_spans_restore(inputs, targets, original, sentinels)
        layouts.add(tuple(np.flatnonzero(inputs < 16)))
    assert len(layouts) > 8  # span positions and lengths are random per row


def assert_spans_restore(inputs: np.ndarray, targets: np.ndarray, original: np.ndarray, sentinels: list[int]) -> None:
    """Sentinels appear once each and in order in a row's inputs and targets, the targets start with
    the first, and putting each span back in place of its sentinel restores the original row."""
    np.testing.assert_array_equal(inputs[np.isin(inputs, sentinels)], sentinels)
    np.testing.assert_array_equal(targets[np.isin(targets, sentinels)], sentinels)
    assert targets[0] == sentinels[0]
    pieces = np.split(targets, np.flatnonzero(np.isin(targets, sentinels))[1:])
    restored = np.concatenate([pieces[sentinels.index(t)][1:] if t in sentinels else [t] for t in inputs])
    np.testing.assert_array_equal(restored, original)


@pytest.mark.parametrize(
    ("family", "objective", "reserved"),
    [("gpt", None, []), ("t5", "prefix_lm", []), ("bert", "mlm", [2]), ("t5", "span_corruption", [2, 3, 4, 5])],
)
def test_the_synthetic_language_leaves_out_the_ids_its_objective_writes(family, objective, reserved):
    cfg = _cfg(family, objective, batch_size=64, seq_len=64)
    source = MarkovSource(cfg)
    assert list(np.setdiff1d(np.arange(VOCAB), source.alphabet)) == reserved
    tokens = np.concatenate([source.batch(0)["inputs"], source.batch(0)["targets"][:, -1:]], axis=1)
    assert not np.isin(tokens, reserved).any()
    assert len(np.unique(tokens)) > VOCAB - len(reserved) - 8  # every other id is in use
    if not reserved:  # nothing reserved: the same chain as before ids were reserved (values from then)
        np.testing.assert_array_equal(tokens[:2, :4], [[217, 72, 221, 110], [163, 154, 38, 34]])


def test_prefix_lm_splits_each_row_into_a_prefix_and_the_suffix_to_predict():
    cfg = _cfg("t5", "prefix_lm", batch_size=32, seq_len=24)
    raw = _rows(32, 24)
    out = split_prefix(raw, _draws(cfg), cfg, special_ids(cfg))
    cuts = out["segment_ids"].sum(axis=1)
    assert cuts.min() >= 1 and cuts.max() <= 23 and len(np.unique(cuts)) > 8
    for row, cut in enumerate(cuts):
        np.testing.assert_array_equal(out["segment_ids"][row], np.arange(24) < cut)
        np.testing.assert_array_equal(out["inputs"][row, :cut], raw["inputs"][row, :cut])
        np.testing.assert_array_equal(out["targets"][row, : 24 - cut], raw["inputs"][row, cut:])
        np.testing.assert_array_equal(out["weights"][row], np.arange(24) < 24 - cut)
    np.testing.assert_array_equal(out["decoder_inputs"][:, 1:], out["targets"][:, :-1])
    assert model_lengths(cfg) == SequenceLengths(24, 24)


@pytest.mark.parametrize(("family", "objective"), [("bert", "mlm"), ("t5", "span_corruption"), ("t5", "prefix_lm")])
def test_batches_are_keyed_by_seed_and_step_and_split_exactly_across_processes(family, objective):
    cfg = _cfg(family, objective)
    whole = make_source(cfg)
    np.testing.assert_equal(whole.batch(3), make_source(cfg).batch(3))
    assert not np.array_equal(whole.batch(3)["inputs"], whole.batch(4)["inputs"])
    assert not np.array_equal(whole.batch(0)["inputs"], whole.eval_batch(0)["inputs"])
    halves = [make_source(cfg, index, 2).batch(3) for index in range(2)]
    for key, value in whole.batch(3).items():
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value)


def test_gpt_rows_train_as_they_are():
    cfg = _cfg("gpt")
    assert isinstance(make_source(cfg), MarkovSource)
    assert model_lengths(cfg) == SequenceLengths(64, 64)


def test_family_defaults_and_the_tiny_configs():
    assert model_lengths(load_config("t5-tiny")) == SequenceLengths(57, 13)
    assert set(make_source(_cfg("bert")).batch(0)) == {"inputs", "targets", "weights"}
    assert set(make_source(_cfg("t5")).batch(0)) == {"inputs", "decoder_inputs", "targets", "weights"}


@pytest.mark.parametrize(
    ("family", "settings", "message"),
    [
        ("gpt", {"name": "mlm"}, "objective.name=mlm trains model.family bert, not gpt"),
        ("t5", {"name": "causal_lm"}, "objective.name=causal_lm trains model.family gpt, not t5"),
        ("bert", {"name": "masked"}, "objective.name: unknown value 'masked'"),
        ("bert", {"name": "classification"}, "objective.name=classification needs a classifier"),
        ("bert", {"mask_token": VOCAB}, "objective.mask_token (256) is not below model.vocab_size"),
        ("bert", {"mask_token": 0}, "objective.mask_token=0 disagrees with the synthetic source, whose [MASK] is id 2"),
        ("bert", {"mask_rate": 1.5}, "objective.mask_rate must be in (0, 1)"),
    ],
)
def test_objective_errors_name_the_key(family, settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _cfg(family, **settings)


def test_classification_needs_labels_from_the_source():
    cfg = config_from_dict({"model": {"family": "bert", "vocab_size": VOCAB, "n_classes": 3}})
    with pytest.raises(ConfigError, match="needs a source that yields `labels`"):
        make_source(cfg).batch(0)


def test_a_synthetic_vocabulary_must_hold_the_reserved_ids():
    # 64 tokens: 3 noise spans, so [MASK] and the sentinels take ids 2 .. 5.
    with pytest.raises(
        ConfigError, match=r"up to 5 .*model.vocab_size=5 does not hold; raise model.vocab_size above 5"
    ):
        config_from_dict({"model": {"family": "t5", "vocab_size": 5}, "train": {"seq_len": 64}})
    assert (
        config_from_dict({"model": {"family": "t5", "vocab_size": 6}, "train": {"seq_len": 64}}).model.vocab_size == 6
    )
