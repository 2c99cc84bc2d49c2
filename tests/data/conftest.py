"""Tiny corpora and a prepared dataset with its token store, shared by the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scalelab.train.config_io import config_from_dict

VOCAB = 384  # byte fallback takes 256 pieces; the rest is what the tiny corpus can support
SENTINELS = 16  # reserved sentinel pieces: the default 100 would not fit VOCAB next to the corpus's characters
SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "an", "el", "or", "th", "sh", "qu", "ze", "ba"]


def make_documents(n: int, seed: int = 0) -> list[str]:
    """`n` distinct pseudo-English documents: made-up words, sentences, newlines and a little Unicode."""
    rng = np.random.default_rng(seed)
    lexicon = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))) for _ in range(300)]
    docs = []
    for i in range(n):
        sentences = []
        for _ in range(rng.integers(2, 8)):
            words = rng.choice(lexicon, size=rng.integers(3, 12))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ";"]))
        docs.append(f"Document {i}: café\n" + "\n".join(sentences) + "\n")
    return docs


def write_jsonl(path: Path, docs: list[str]) -> Path:
    """Write documents as JSON lines with a `text` field."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def make_cfg(
    data_dir: Path, vocab_size: int = VOCAB, batch_size: int = 8, seq_len: int = 16, family: str = "gpt", **data
):
    """A validated config of a `family` model reading dataset `tiny_text` (unless overridden) from `data_dir`."""
    settings = {
        "source": "tfds",
        "name": "tiny_text",
        "data_dir": str(data_dir),
        "validation_fraction": 0.2,
        "sentinels": SENTINELS,
    }
    settings.update(data)
    return config_from_dict(
        {
            "model": {"family": family, "vocab_size": vocab_size, "d_model": 32, "n_heads": 2, "max_seq_len": seq_len},
            "train": {"batch_size": batch_size, "seq_len": seq_len, "steps": 10, "eval_batches": 2},
            "data": settings,
        }
    )


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A folder with 160 documents: 150 as JSON lines, 10 as .txt files."""
    root = tmp_path_factory.mktemp("corpus")
    docs = make_documents(160)
    write_jsonl(root / "part.jsonl", docs[:150])
    for i, doc in enumerate(docs[150:]):
        (root / "texts" / f"doc{i}.txt").parent.mkdir(exist_ok=True)
        (root / "texts" / f"doc{i}.txt").write_text(doc)
    return root


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, tiny_corpus):
    """(config, token store) of `tiny_corpus` prepared and tokenized in a session-wide data_dir."""
    from scalelab.data.builder import prepare_dataset
    from scalelab.data.tokens import build_store

    cfg = make_cfg(tmp_path_factory.mktemp("data"), corpus=str(tiny_corpus))
    prepare_dataset(cfg.data, progress=False)
    store, _ = build_store(cfg.data, VOCAB, progress=False)
    return cfg, store
