"""Text sources: the objectives write the tokenizer's own [MASK] and sentinel ids, and refuse a
tokenizer that lacks them or disagrees with the config."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from scalelab.cli import main
from scalelab.data import make_source
from scalelab.data.objectives import span_counts
from scalelab.data.special import MASK_ID, layout
from scalelab.data.tokenizer import LOSSLESS, training_lines
from scalelab.model.config import ConfigError
from tests.data.conftest import SENTINELS, VOCAB, make_cfg, make_documents
from tests.data.test_objectives import assert_spans_restore


def test_the_store_records_its_reserved_ids_and_no_text_encodes_to_them(prepared):
    _, store = prepared
    assert store.tokenizer.special == layout(SENTINELS)
    assert (store.meta["mask_id"], store.meta["first_sentinel_id"], store.meta["sentinels"]) == (2, 3, SENTINELS)
    for role in ("train", "eval"):
        stream = np.asarray(store.stream(role))
        assert not np.isin(stream, layout(SENTINELS).reserved).any()


def test_mlm_batches_hold_the_tokenizers_mask_id(prepared):
    cfg, store = prepared
    source = make_source(make_cfg(Path(cfg.data.data_dir), batch_size=16, seq_len=64, family="bert"))
    raw, out = source.source.batch(0), source.batch(0)
    assert not (raw["inputs"] == MASK_ID).any()
    chosen = out["weights"] > 0
    masked = out["inputs"] == store.tokenizer.special.mask
    assert masked.any() and not (masked & ~chosen).any()
    assert 0.7 < masked[chosen].mean() < 0.9  # 80% of the chosen positions
    np.testing.assert_array_equal(out["targets"], raw["inputs"])


def test_span_corruption_writes_the_tokenizers_sentinels_and_the_targets_restore_the_text(prepared):
    cfg, store = prepared
    t5 = make_cfg(Path(cfg.data.data_dir), batch_size=16, seq_len=64, family="t5")
    source = make_source(t5)
    _, spans = span_counts(64, t5.objective)
    sentinels = list(store.tokenizer.special.sentinels[:spans])
    assert sentinels == [3, 4, 5]
    raw, out = source.source.batch(0), source.batch(0)
    reserved = np.isin(out["inputs"], store.tokenizer.special.reserved)
    assert reserved.sum(axis=1).tolist() == [spans] * 16  # exactly the sentinels, no [MASK], nothing else
    for inputs, targets, original in zip(out["inputs"], out["targets"], raw["inputs"], strict=True):
        assert_spans_restore(inputs, targets, original, sentinels)
        names = re.findall(r"<extra_id_\d+>", store.tokenizer.decode(inputs, special=True))
        assert names == [f"<extra_id_{i}>" for i in range(spans)]
        # Splicing the decoded spans into the decoded input gives the row's text back.
        parts = re.split(r"<extra_id_\d+>", store.tokenizer.decode(targets, special=True))[1:]
        text = store.tokenizer.decode(inputs, special=True)
        for i, part in enumerate(parts):
            text = text.replace(f"<extra_id_{i}>", part, 1)
        assert text == store.tokenizer.decode(original, special=True)  # EOS included


def test_the_config_needs_a_sentinel_for_every_span(tmp_path):
    with pytest.raises(ConfigError) as error:
        make_cfg(tmp_path, seq_len=64, family="t5", sentinels=2)
    message = str(error.value)
    assert "into 3 noise spans" in message and "data.sentinels=2; raise data.sentinels to 3 or more" in message
    assert "--set data.sentinels=3 --set model.vocab_size=384 --force" in message
    assert make_cfg(tmp_path, seq_len=64, family="t5", sentinels=3).data.sentinels == 3


def test_an_explicit_mask_token_must_be_the_tokenizers(prepared):
    cfg, _ = prepared
    bert = make_cfg(Path(cfg.data.data_dir), family="bert")

    def with_mask(token: int):
        return dataclasses.replace(bert, objective=dataclasses.replace(bert.objective, mask_token=token))

    with pytest.raises(
        ConfigError, match=r"objective.mask_token=0 disagrees with the tokenizer at .*bpe-384-s16, whose "
    ):
        make_source(with_mask(0))
    assert (make_source(with_mask(MASK_ID)).batch(0)["inputs"] == MASK_ID).any()


def test_data_sentinels_choose_the_tokenizer_and_must_match_it(prepared):
    cfg, store = prepared
    data_dir = Path(cfg.data.data_dir)
    # The sentinel count is part of the tokenizer's name: another count is another tokenizer.
    with pytest.raises(
        ConfigError, match=r"no bpe tokenizer with 384 pieces and data.sentinels=20 sentinels.*bpe-384-s16"
    ):
        make_source(make_cfg(data_dir, family="bert", sentinels=20))
    # A folder whose recorded reserved pieces disagree with its name (copied, renamed) is refused.
    renamed = shutil.copytree(store.path, store.path.with_name("bpe-384-s20"))
    try:
        with pytest.raises(
            ConfigError, match=rf"reserves {SENTINELS} sentinels but data.sentinels=20; set data.sentin"
        ):
            make_source(make_cfg(data_dir, family="bert", sentinels=20))
    finally:
        shutil.rmtree(renamed)  # the prepared data dir is shared by the whole session


def _old_tokenizer(docs: list[str]) -> bytes:
    """A tokenizer as `scalelab tokenizer train` made them before it reserved [MASK] and sentinels."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_lines(docs, 10**9),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB,
        minloglevel=2,
        **LOSSLESS,
    )
    return model.getvalue()


@pytest.fixture
def old_store(prepared, tmp_path) -> Path:
    """A copy of the prepared data whose tokenizer (model and meta.json) predates the reserved pieces."""
    cfg, store = prepared
    data_dir = tmp_path / "data"
    shutil.copytree(cfg.data.data_dir, data_dir)
    folder = data_dir / store.path.relative_to(cfg.data.data_dir)
    (folder / "spm.model").write_bytes(_old_tokenizer(make_documents(160)))
    meta = json.loads((folder / "meta.json").read_text())
    for key in ("mask_id", "first_sentinel_id", "sentinels"):
        del meta[key]
    (folder / "meta.json").write_text(json.dumps(meta))
    return data_dir


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_a_tokenizer_from_before_the_reserved_pieces_is_refused_with_the_retrain_command(old_store, family):
    with pytest.raises(ConfigError) as error:
        make_source(make_cfg(old_store, seq_len=64, family=family))
    message = str(error.value)
    assert "was trained before scalelab reserved [MASK] and sentinel pieces" in message
    command = f"scalelab tokenizer train --set data.name=tiny_text --set data.data_dir={old_store}"
    assert f"retrain it: {command} --set data.sentinels={SENTINELS} --set model.vocab_size={VOCAB} --force" in message


def test_gpt_still_reads_an_old_tokenizer_and_tokenizer_train_warns_about_it(old_store, capsys):
    assert make_source(make_cfg(old_store)).batch(0)["inputs"].shape == (8, 16)
    flags = ["--set", f"data.data_dir={old_store}", "--set", "data.name=tiny_text", "--quiet"]
    flags += ["--set", f"data.sentinels={SENTINELS}", "--set", f"model.vocab_size={VOCAB}"]
    assert main(["tokenizer", "train", *flags]) == 0
    captured = capsys.readouterr()
    assert "exists already (--force retrains it)" in captured.out
    assert "warning: it has no reserved [MASK] or sentinel pieces" in captured.err
    assert main(["tokenizer", "train", *flags, "--force"]) == 0
    captured = capsys.readouterr()
    assert f"reserved ids: [MASK] 2, <extra_id_0>..<extra_id_{SENTINELS - 1}> 3..{SENTINELS + 2}" in captured.out
    assert not captured.err
    assert (make_source(make_cfg(old_store, family="bert")).batch(0)["inputs"] == MASK_ID).any()
