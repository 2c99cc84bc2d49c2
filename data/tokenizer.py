"""A lossless sentencepiece tokenizer: decode(encode(text)) == text for any Unicode text.

The trainer settings keep text as it is (no normalisation, whitespace kept, newlines and
tabs as pieces) and fall back to UTF-8 bytes for anything outside the vocabulary. One gap
remains in sentencepiece itself: it writes spaces as U+2581 internally, so a literal U+2581
would come back as a space. `Tokenizer.encode` therefore emits that character as its three
byte pieces, which decode to the character itself.

The trainer also reserves [MASK] and `sentinels` T5 sentinels as control pieces with the fixed
ids of data/special.py. Encoding text never produces a control piece and decoding drops
them, so they cannot be confused with text in either direction; `decode(ids, special=True)`
writes them as their names for reading corrupted inputs and model outputs.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from scalelab.data.special import MASK_PIECE, SpecialIds, layout, reserved_pieces, sentinel_piece
from scalelab.data.storage import DataError

SPACE_MARK = "\u2581"
EOS_ID = 1
MAX_SENTENCE_CHARS = 4096  # training lines are cut to this; sentencepiece skips longer ones
LOSSLESS = {
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "allow_whitespace_only_pieces": True,
    "add_dummy_prefix": False,  # a leading space is text, not something the tokenizer adds
    "byte_fallback": True,
    "user_defined_symbols": ["\n", "\t"],
    # Byte fallback already covers every character; rarer ones than this share are left to it
    # so that a large corpus's long tail of scripts does not crowd out useful pieces.
    "character_coverage": 0.9999,
    "unk_id": 0,
    "eos_id": EOS_ID,
    "bos_id": -1,
    "pad_id": -1,
}
BYTE_PIECES = 256
META_PIECES = 2  # <unk> and EOS (no BOS or padding piece)
# Pieces every tokenizer holds before it learns any: <unk>, EOS, the user-defined ones and the bytes.
FIXED_PIECES = META_PIECES + len(LOSSLESS["user_defined_symbols"]) + BYTE_PIECES
# Pieces a suggested vocabulary leaves for a corpus's own characters; English text and code use about 100.
CHARACTER_ROOM = 128
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


class Tokenizer:
    """Encode text to ids and back with a trained sentencepiece model."""

    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.mark_ids = [self.sp.piece_to_id(f"<0x{byte:02X}>") for byte in SPACE_MARK.encode("utf-8")]
        self.special = self._reserved_ids()

    def _reserved_ids(self) -> SpecialIds | None:
        """The ids of the [MASK] and sentinel control pieces; None for a tokenizer trained without them."""
        mask = self.sp.piece_to_id(MASK_PIECE)  # a missing piece maps to <unk>, which is no control piece
        if not self.sp.is_control(mask):
            return None
        sentinels: list[int] = []
        while self.sp.is_control(index := self.sp.piece_to_id(sentinel_piece(len(sentinels)))):
            sentinels.append(index)
        return SpecialIds(mask, tuple(sentinels))

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """Load a model file written by `save`."""
        return cls(Path(path).read_bytes())

    def save(self, path: Path) -> None:
        """Write the model file."""
        Path(path).write_bytes(self.proto)

    @property
    def vocab_size(self) -> int:
        """Number of pieces, control and byte pieces included."""
        return self.sp.vocab_size()

    @property
    def eos_id(self) -> int:
        """The end-of-sequence id packing puts between documents."""
        return self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        """The ids of `text` (no EOS added)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text, encoded on all cores."""
        encoded = self.sp.encode(texts, num_threads=os.cpu_count() or 1)
        for i, text in enumerate(texts):
            if SPACE_MARK in text:
                encoded[i] = self._encode_with_marks(text)
        return encoded

    def _encode_with_marks(self, text: str) -> list[int]:
        parts = text.split(SPACE_MARK)
        ids = list(self.sp.encode(parts[0]))
        for part in parts[1:]:
            ids += self.mark_ids
            ids += self.sp.encode(part)
        return ids

    def decode(self, ids: Iterable[int], special: bool = False) -> str:
        """The text of `ids`. Control ids (EOS, [MASK], the sentinels) decode to nothing, or with
        `special` to their names (`</s>`, `[MASK]`, `<extra_id_0>`, ...)."""
        ids = [int(i) for i in ids]
        if not special:
            return self.sp.decode(ids)
        parts, run = [], []
        for index in ids:
            if self.sp.is_control(index):
                parts += [self.sp.decode(run), self.sp.id_to_piece(index)]
                run = []
            else:
                run.append(index)
        return "".join([*parts, self.sp.decode(run)])


def training_lines(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Lines of `texts` for sentencepiece, cut to MAX_SENTENCE_CHARS, up to `max_chars` characters in all."""
    used = 0
    for text in texts:
        for line in text.split("\n"):
            for start in range(0, len(line), MAX_SENTENCE_CHARS):
                piece = line[start : start + MAX_SENTENCE_CHARS]
                yield piece
                used += len(piece)
                if used >= max_chars:
                    return


def min_vocab_size(sentinels: int) -> int:
    """The fewest pieces any tokenizer with `sentinels` sentinels can have: the fixed and reserved ones and one more.

    A corpus's characters need pieces on top of that (sentencepiece says how many when it trains).
    """
    return FIXED_PIECES + len(reserved_pieces(sentinels)) + 1


def suggested_vocab_size(sentinels: int) -> int:
    """A vocabulary size to suggest for one below the minimum: the minimum with room for a corpus's
    characters, rounded up to a multiple of 128 (512 for any sentinel count up to 150)."""
    return -(-(min_vocab_size(sentinels) + CHARACTER_ROOM) // 128) * 128


def train_tokenizer(
    texts: Iterable[str], kind: str, vocab_size: int, sentinels: int, max_chars: int = 200_000_000
) -> Tokenizer:
    """Train a lossless `kind` (bpe or unigram) tokenizer with `vocab_size` pieces on `texts`,
    reserving [MASK] and `sentinels` sentinels at the ids of data/special.py."""
    reserved = reserved_pieces(sentinels)
    if vocab_size < min_vocab_size(sentinels):
        raise DataError(
            f"model.vocab_size={vocab_size} is too small for the reserved pieces: <unk>, EOS, newline, tab, "
            f"the {BYTE_PIECES} byte pieces, [MASK] and data.sentinels={sentinels} sentinels take "
            f"{FIXED_PIECES + len(reserved)} ids before any of the corpus's characters, so it needs at least "
            f"{min_vocab_size(sentinels)}; raise model.vocab_size to {suggested_vocab_size(sentinels)} (room for the "
            "corpus's characters), or lower data.sentinels (span corruption needs one per noise span of a row)"
        )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_lines(texts, max_chars),
            model_writer=model,
            model_type=kind,
            vocab_size=vocab_size,
            max_sentence_length=4 * MAX_SENTENCE_CHARS,  # in bytes: a UTF-8 character takes up to 4
            input_sentence_size=5_000_000,
            shuffle_input_sentence=True,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
            control_symbols=reserved,
            **LOSSLESS,
        )
    except RuntimeError as error:
        raise _vocab_error(str(error), kind, vocab_size, sentinels) from None
    tokenizer = Tokenizer(model.getvalue())
    if tokenizer.special != layout(sentinels):  # sentencepiece places control pieces right after EOS
        raise RuntimeError(f"sentencepiece put the reserved pieces at {tokenizer.special}, not {layout(sentinels)}")
    return tokenizer


def _vocab_error(message: str, kind: str, vocab_size: int, sentinels: int) -> DataError:
    """sentencepiece's vocabulary errors, restated in terms of the config keys that fix them."""
    if match := _TOO_SMALL.search(message):
        return DataError(
            f"model.vocab_size={vocab_size} is too small for this corpus: the {BYTE_PIECES} byte pieces, the special "
            f"pieces ([MASK] and data.sentinels={sentinels} sentinels among them) and its characters need at least "
            f"{match[2]}; raise model.vocab_size to {match[2]} or more, or lower data.sentinels"
        )
    if match := _TOO_LARGE.search(message):
        return DataError(
            f"model.vocab_size={vocab_size} is more than this corpus supports for a {kind} tokenizer "
            f"(at most {match[2]}); lower model.vocab_size or add text to the corpus"
        )
    if "!sentences_.empty()" in message:  # sentencepiece's check that it got any text
        return DataError("the corpus has no text to train a tokenizer on; add documents and run data prepare again")
    return DataError(f"sentencepiece could not train a {kind} tokenizer with {vocab_size} pieces: {message}")
