"""Step-indexed batch sources over post-training JSONL files (train/stage.py's `Stage.source`).

Like the pre-training loader, batch(step) is a pure function of (data seed, step): the file is
read, checked and encoded once when the run starts; rows are then visited in a permutation
reshuffled every epoch (data/loader.py's `shuffled_rows`), so a resumed run sees the same batches.

- SFTSource packs examples into rows of train.seq_len (segment ids and positions keep them apart).
- PairSource puts each preference pair in two consecutive rows, chosen then rejected, one sequence
  per row: train.batch_size counts rows, so a batch holds batch_size / 2 pairs.

The tokenizer is the one the data section names (data.source=tfds, data.name, model.vocab_size):
the pre-trained run's, so `scalelab generate` on the fine-tuned run reads prompts with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scalelab.data import process_rows
from scalelab.data.loader import shuffled_rows
from scalelab.errors import ConfigError
from scalelab.posttrain.encode import Encoded, Encoder, pack, row_batch
from scalelab.posttrain.records import read_examples, read_pairs, split_records

TRAIN_STREAM, EVAL_STREAM = 0, 1
SALT = 0x5F7  # keeps the example order apart from other draws of the same data seed


def open_tokenizer(cfg: Any) -> tuple[Any, Path]:
    """(tokenizer, its folder) of the dataset the config names; post-training reads text, so synthetic has none."""
    if cfg.data.source != "tfds":
        raise ConfigError(
            f"posttrain.stage={cfg.posttrain.stage} reads text with a tokenizer, but data.source={cfg.data.source} "
            "has none; set data.source=tfds and data.name to the dataset whose tokenizer the pre-trained run used"
        )
    from scalelab.data.tokens import find_store

    store = find_store(cfg.data, cfg.model.vocab_size)
    return store.tokenizer, store.path


def _records(cfg: Any, read) -> tuple[list, list]:
    """(train, held-out) records: eval_file when given, else a content-hash share of train_file."""
    post = cfg.posttrain
    if post.train_file is None:
        raise ConfigError(f"posttrain.stage={post.stage} needs posttrain.train_file (a JSONL file); set it")
    records = read(Path(post.train_file), "posttrain.train_file")
    if post.eval_file is not None:
        return records, read(Path(post.eval_file), "posttrain.eval_file")
    return split_records(records, post.eval_fraction)


def _order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, SALT]).permutation(n)


class SFTSource:
    """Packed rows of encoded examples, completion tokens weighted 1 and prompt tokens 0."""

    def __init__(self, cfg: Any, process_index: int = 0, process_count: int = 1, encoder: Encoder | None = None):
        self.cfg, self.seq_len, self.seed = cfg, cfg.train.seq_len, cfg.data.seed
        self.batch_size = cfg.train.batch_size
        self.rows = process_rows(self.batch_size, process_index, process_count)
        if encoder is None:
            tokenizer, folder = open_tokenizer(cfg)
            encoder = Encoder(tokenizer, folder, self.seq_len, cfg.posttrain.overflow)
        train, held = _records(cfg, read_examples)
        # Every example is encoded up front, so a bad line is reported before the first step.
        train_seqs = [encoder.example(e) for e in train]
        self.train_seqs = [train_seqs[i] for i in _order(len(train_seqs), self.seed)]
        self.eval_seqs = [encoder.example(e) for e in held]
        self.train_rows = pack(self.train_seqs, self.seq_len)
        self.eval_rows = pack(self.eval_seqs, self.seq_len)

    def _positions(self, index: int) -> range:
        start = index * self.batch_size
        return range(start + self.rows.start, start + self.rows.stop)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the training batch at `step`."""
        rows = shuffled_rows(self._positions(step), len(self.train_rows), self.seed, TRAIN_STREAM)
        return row_batch([[self.train_seqs[i] for i in self.train_rows[r]] for r in rows], self.seq_len)

    def eval_batch(self, index: int) -> dict[str, np.ndarray]:
        """This process's rows of held-out batch `index` (the held-out rows in order, wrapping around)."""
        rows = [p % len(self.eval_rows) for p in self._positions(index)]
        return row_batch([[self.eval_seqs[i] for i in self.eval_rows[r]] for r in rows], self.seq_len)


class PairSource:
    """Preference pairs as row pairs (chosen, rejected); weights mark each response's tokens."""

    def __init__(self, cfg: Any, process_index: int = 0, process_count: int = 1, encoder: Encoder | None = None):
        self.cfg, self.seq_len, self.seed = cfg, cfg.train.seq_len, cfg.data.seed
        rows = process_rows(cfg.train.batch_size, process_index, process_count)
        if cfg.train.batch_size % 2 or rows.start % 2 or rows.stop % 2:
            raise ConfigError(
                f"posttrain.stage={cfg.posttrain.stage} puts each pair in two rows, so train.batch_size "
                f"({cfg.train.batch_size}) must be even on every process; make it a multiple of {2 * process_count}"
            )
        self.pairs_per_batch = cfg.train.batch_size // 2
        self.pair_slice = slice(rows.start // 2, rows.stop // 2)
        if encoder is None:
            tokenizer, folder = open_tokenizer(cfg)
            encoder = Encoder(tokenizer, folder, self.seq_len, cfg.posttrain.overflow)
        train, held = _records(cfg, read_pairs)
        self.train_pairs = [encoder.pair(p) for p in train]
        self.eval_pairs = [encoder.pair(p) for p in held]

    def _positions(self, index: int) -> range:
        start = index * self.pairs_per_batch
        return range(start + self.pair_slice.start, start + self.pair_slice.stop)

    def _batch(self, pairs: list[tuple[Encoded, Encoded]]) -> dict[str, np.ndarray]:
        return row_batch([[seq] for pair in pairs for seq in pair], self.seq_len)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows (pairs of them) of the training batch at `step`."""
        order = shuffled_rows(self._positions(step), len(self.train_pairs), self.seed, TRAIN_STREAM)
        return self._batch([self.train_pairs[i] for i in order])

    def eval_batch(self, index: int) -> dict[str, np.ndarray]:
        """This process's rows of held-out batch `index` (held-out pairs in order, wrapping around)."""
        return self._batch([self.eval_pairs[p % len(self.eval_pairs)] for p in self._positions(index)])
