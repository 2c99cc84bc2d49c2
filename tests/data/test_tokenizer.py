"""The sentencepiece tokenizer is lossless on any text, reserves [MASK] and the sentinels at fixed ids
that no text encodes to, and vocab sizes a corpus (or the reserved pieces) can't support are errors."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.data.special import MASK_ID, SpecialIds, layout
from scalelab.data.storage import DataError
from scalelab.data.tokenizer import Tokenizer, min_vocab_size, train_tokenizer
from tests.data.conftest import SENTINELS, VOCAB, make_documents


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(make_documents(300, seed=1), "bpe", VOCAB, SENTINELS)


@pytest.fixture(scope="module")
def unigram() -> Tokenizer:
    return train_tokenizer(make_documents(300, seed=2), "unigram", VOCAB, SENTINELS)


def _assert_lossless_and_plain(tokenizer: Tokenizer, text: str) -> None:
    """decode(encode(text)) == text, and no reserved id (nor EOS) comes out of text."""
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert not set(ids) & {tokenizer.eos_id, *tokenizer.special.reserved}


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
    _assert_lossless_and_plain(bpe, text)


@settings(max_examples=100, deadline=None)
@given(text=tricky)
def test_unigram_round_trip(unigram, text):
    _assert_lossless_and_plain(unigram, text)


# The reserved pieces' own names, alone and inside text, are text like any other.
NAMES = ["[MASK]", "<extra_id_0>", f"<extra_id_{SENTINELS - 1}>", "a [MASK] b<extra_id_3>c", "</s><unk><s>"]


@pytest.mark.parametrize("text", NAMES)
@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_the_names_of_reserved_pieces_encode_as_text(request, kind, text):
    _assert_lossless_and_plain(request.getfixturevalue(kind), text)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_mask_and_sentinels_have_their_fixed_ids_and_decode_to_their_names_only_on_request(request, kind):
    tokenizer = request.getfixturevalue(kind)
    assert tokenizer.special == layout(SENTINELS) == SpecialIds(MASK_ID, tuple(range(3, 3 + SENTINELS)))
    names = ["[MASK]", *(f"<extra_id_{i}>" for i in range(SENTINELS))]
    for index, name in zip(tokenizer.special.reserved, names, strict=True):
        assert tokenizer.sp.id_to_piece(index) == name
        assert tokenizer.decode([index], special=True) == name
        assert tokenizer.decode([index]) == ""  # never text by accident
    first, last = tokenizer.special.sentinels[0], tokenizer.special.sentinels[-1]
    ids = [*tokenizer.encode("Kalo "), MASK_ID, *tokenizer.encode(" mine"), first, tokenizer.eos_id, last]
    assert tokenizer.decode(ids) == "Kalo  mine"
    assert tokenizer.decode(ids, special=True) == f"Kalo [MASK] mine<extra_id_0></s><extra_id_{SENTINELS - 1}>"


def test_no_sentinels_reserves_the_mask_only():
    tokenizer = train_tokenizer(make_documents(100, seed=3), "bpe", VOCAB, 0)
    assert tokenizer.special == SpecialIds(MASK_ID, ())
    assert tokenizer.sp.id_to_piece(MASK_ID + 1) == "\n"


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
    loaded = Tokenizer.load(path)
    assert loaded.encode("some text") == bpe.encode("some text")
    assert loaded.special == bpe.special


def test_vocab_too_small_for_the_corpus_names_the_minimum():
    # 260 fixed pieces and 17 reserved ones fit in 300, but not with the corpus's characters.
    message = (
        r"model.vocab_size=300 is too small for this corpus: .*data.sentinels=16 sentinels.* at least (\d+); "
        r"raise model.vocab_size to \1 or more, or lower data.sentinels"
    )
    with pytest.raises(DataError, match=message) as error:
        train_tokenizer(make_documents(50), "bpe", 300, SENTINELS)
    minimum = int(re.search(r"at least (\d+)", str(error.value))[1])
    assert minimum > 260 + 1 + SENTINELS  # the characters come on top of the fixed and reserved pieces
    train_tokenizer(make_documents(50), "bpe", minimum + 8, SENTINELS)


def test_vocab_too_small_for_the_reserved_pieces_names_both_fixes():
    # <unk>, EOS, newline, tab, 256 bytes, [MASK] and 100 sentinels: 361 ids before any character.
    message = (
        r"model.vocab_size=361 is too small for the reserved pieces: .*data.sentinels=100 sentinels take 361 ids .*"
        r"needs at least 362; raise model.vocab_size .* or lower data.sentinels"
    )
    with pytest.raises(DataError, match=message):
        train_tokenizer(make_documents(50), "bpe", 361, 100)


@pytest.mark.parametrize("sentinels", [0, 100])
def test_vocab_below_the_minimum_suggests_a_size_that_trains(sentinels):
    with pytest.raises(DataError, match=rf"needs at least {min_vocab_size(sentinels)}; raise .* to (\d+)") as error:
        train_tokenizer(make_documents(50), "bpe", 256, sentinels)
    suggested = int(re.search(r"raise model\.vocab_size to (\d+)", str(error.value))[1])
    assert train_tokenizer(make_documents(50), "bpe", suggested, sentinels).vocab_size == suggested


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_vocab_too_large_names_the_maximum(kind):
    with pytest.raises(DataError, match=rf"model.vocab_size=50000 is more than this corpus supports for a {kind}"):
        train_tokenizer(make_documents(20), kind, 50_000, SENTINELS)


def test_no_text_is_an_error():
    with pytest.raises(DataError, match="no text"):
        train_tokenizer([], "bpe", VOCAB, SENTINELS)
