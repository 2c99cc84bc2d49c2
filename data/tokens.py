"""The token store: a tokenizer trained on a dataset, stored with the dataset's encoded splits.

`<dataset version>/tokenizers/<kind>-<vocab>[-s<sentinels>]/` holds `spm.model`, one flat little-endian token
stream per split (documents joined by packing.join_documents) and `meta.json`, which also
records the reserved ids (`mask_id`, `first_sentinel_id`, `sentinels`: sentinel i is
first_sentinel_id + i). A store written before scalelab reserved them lacks those keys, and its
tokenizer lacks the pieces. The stream is memory-mapped, so any packed row is a slice and the
loader needs no iterator state.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scalelab.data.packing import join_documents
from scalelab.data.reader import TextSplit, eval_split, require_dataset
from scalelab.data.storage import (
    TOKENIZER_META,
    DataError,
    available_tokenizers,
    publish_dir,
    tokenizer_command,
    tokenizer_dir,
)
from scalelab.data.tokenizer import (
    BYTE_PIECES,
    Tokenizer,
    min_vocab_size,
    suggested_vocab_size,
    train_tokenizer,
)
from scalelab.runtime.progress import progress_bar

MODEL_FILE = "spm.model"
ENCODE_CHUNK = 512  # documents encoded per sentencepiece call


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned type that holds every id."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def encode_split(tokenizer: Tokenizer, texts: Iterable[str], path: Path, bar: tqdm) -> dict[str, int]:
    """Encode documents into the token stream file `path`; return its token and document counts."""
    dtype = token_dtype(tokenizer.vocab_size)
    counts = {"tokens": 0, "documents": 0}
    with open(path, "wb") as f:
        for chunk in _chunks(texts, ENCODE_CHUNK):
            stream = join_documents(tokenizer.encode_batch(chunk), tokenizer.eos_id, dtype)
            f.write(stream.tobytes())
            counts["tokens"] += len(stream)
            counts["documents"] += len(chunk)
            bar.update(len(chunk))
    return counts


@dataclasses.dataclass(frozen=True)
class TokenStore:
    """A complete token store: its folder, its metadata and its tokenizer."""

    path: Path
    meta: dict
    tokenizer: Tokenizer

    def stream(self, split: str) -> np.ndarray:
        """The memory-mapped token stream of `split` (`train` or `eval`)."""
        name = self.meta["splits"][split]["file"]
        return np.memmap(self.path / name, dtype=np.dtype(self.meta["dtype"]), mode="r")


def build_store(data, vocab_size: int, force: bool = False, max_chars: int = 200_000_000, progress: bool = True):
    """Train the `data.tokenizer` tokenizer on the train split, encode both splits, publish; return (store, built)."""
    version_dir = require_dataset(data)
    final = tokenizer_dir(version_dir, data.tokenizer, vocab_size, data.sentinels)
    if (final / TOKENIZER_META).is_file() and not force:
        return open_store(final), False
    held_out = eval_split(version_dir)
    train_split = TextSplit(version_dir, "train", data.text_field)
    with progress_bar(total=len(train_split), desc="reading text", unit=" docs", disable=not progress) as bar:
        texts = _counted(train_split.texts(), bar)
        tokenizer = train_tokenizer(texts, data.tokenizer, vocab_size, data.sentinels, max_chars)
    meta = {
        "kind": data.tokenizer,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "mask_id": tokenizer.special.mask,
        "first_sentinel_id": tokenizer.special.sentinels[0] if data.sentinels else None,
        "sentinels": data.sentinels,
        "dtype": token_dtype(tokenizer.vocab_size).str,
        "dataset": data.name,
        "text_field": data.text_field,
        "splits": {},
    }
    with publish_dir(final) as staging:
        tokenizer.save(staging / MODEL_FILE)
        for role, split in (("train", "train"), ("eval", held_out)):
            source = TextSplit(version_dir, split, data.text_field)
            with progress_bar(total=len(source), desc=f"encoding {split}", unit=" docs", disable=not progress) as bar:
                counts = encode_split(tokenizer, source.texts(), staging / f"{split}.tokens", bar)
            meta["splits"][role] = {"split": split, "file": f"{split}.tokens", **counts}
        # meta.json marks the store complete: it is written last, inside the staging folder.
        (staging / TOKENIZER_META).write_text(json.dumps(meta, indent=2))
    return open_store(final), True


def _chunks(texts: Iterable[str], size: int) -> Iterable[list[str]]:
    iterator = iter(texts)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _counted(texts: Iterable[str], bar: tqdm) -> Iterable[str]:
    for text in texts:
        bar.update(1)
        yield text


def open_store(path: Path) -> TokenStore:
    """Open a complete token store folder."""
    meta = json.loads((path / TOKENIZER_META).read_text())
    return TokenStore(path, meta, Tokenizer.load(path / MODEL_FILE))


def find_store(data, vocab_size: int) -> TokenStore:
    """The token store a config reads, or a DataError naming the command that builds it."""
    version_dir = require_dataset(data)
    path = tokenizer_dir(version_dir, data.tokenizer, vocab_size, data.sentinels)
    if (path / TOKENIZER_META).is_file():
        return open_store(path)
    message = (
        f"dataset {data.name!r} has no {data.tokenizer} tokenizer with {vocab_size} pieces and "
        f"data.sentinels={data.sentinels} sentinels "
        f"(model.vocab_size must equal the tokenizer's vocab size); train it with: {tokenizer_command(data, vocab_size)}"
    )
    if vocab_size < min_vocab_size(data.sentinels):
        # That command would fail: no tokenizer is this small. Suggest a size that can be trained.
        suggested = suggested_vocab_size(data.sentinels)
        message = (
            f"model.vocab_size={vocab_size} is below the smallest tokenizer with data.sentinels={data.sentinels} "
            f"sentinels ({min_vocab_size(data.sentinels)} pieces: the {BYTE_PIECES} byte pieces, the special pieces and one "
            f"more); set model.vocab_size={suggested}"
        )
        if (tokenizer_dir(version_dir, data.tokenizer, suggested, data.sentinels) / TOKENIZER_META).is_file():
            raise DataError(f"{message}, whose tokenizer dataset {data.name!r} already has")
        message += f" and train its tokenizer for dataset {data.name!r} with: {tokenizer_command(data, suggested)}"
    others = available_tokenizers(version_dir)
    if others:
        message += f"; or use one it has ({', '.join(others)}) by setting model.vocab_size, data.tokenizer and data.sentinels (the -s suffix)"
    raise DataError(message)
