"""The sentencepiece tokenizer is lossless on any text, and vocab sizes a corpus can't support are errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.train.data.conftest import VOCAB, make_documents
from train.data.storage import DataError
from train.data.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(make_documents(300, seed=1), "bpe", VOCAB)


@pytest.fixture(scope="module")
def unigram() -> Tokenizer:
    return train_tokenizer(make_documents(300, seed=2), "unigram", VOCAB)


# Text from every Unicode category sentencepiece could stumble on: whitespace runs, newlines,
# tabs, control characters, combining marks, astral-plane emoji and its own U+2581 space marker.
tricky = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from([" ", "\n", "\t", "\r", "\u2581", "\x00", "\u0301", "\U0001f600", "ﬁ", "é"]),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(text=tricky)
def test_bpe_round_trip(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(text=tricky)
def test_unigram_round_trip(unigram, text):
    assert unigram.decode(unigram.encode(text)) == text


@pytest.mark.parametrize(
    "text",
    ["  leading and trailing  ", "a\u2581b\u2581\u2581", "\u2581", "line\n\n\tindented\r\n", "x" * 10_000, ""],
)
def test_round_trip_examples(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.eos_id not in ids


def test_batch_encoding_matches_single(bpe):
    texts = ["plain text", "with \u2581 marker", "", "more\ttext\n"]
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


def test_vocab_sizes(bpe, tmp_path):
    assert bpe.vocab_size == VOCAB
    path = tmp_path / "spm.model"
    bpe.save(path)
    assert Tokenizer.load(path).encode("some text") == bpe.encode("some text")


def test_vocab_too_small_names_the_minimum():
    with pytest.raises(DataError, match=r"model.vocab_size=260 is too small .* at least \d+; raise model.vocab_size"):
        train_tokenizer(make_documents(50), "bpe", 260)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_vocab_too_large_names_the_maximum(kind):
    with pytest.raises(DataError, match=rf"model.vocab_size=50000 is more than this corpus supports for a {kind}"):
        train_tokenizer(make_documents(20), kind, 50_000)


def test_no_text_is_an_error():
    with pytest.raises(DataError, match="no text"):
        train_tokenizer([], "bpe", VOCAB)
