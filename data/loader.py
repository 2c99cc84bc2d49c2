"""The step-indexed loader for prepared TFDS datasets (`data.source: tfds`).

Global row g of the training stream is row g mod N of epoch g div N, where N is the number of
packed rows; within an epoch the rows are visited in a permutation seeded by (data seed,
epoch). The batch for step s is global rows s*B ... s*B+B-1, so it is a pure function of
(seed, s): a restarted run, or any process, gets it without replaying anything. Each process
builds only its own rows, and a background thread builds the next steps ahead of time.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import numpy as np
from grain.experimental import index_shuffle

from scalelab.data import process_rows
from scalelab.data.packing import num_rows, pack_rows
from scalelab.data.storage import DataError
from scalelab.data.tokens import TokenStore, find_store

TRAIN_STREAM, EVAL_STREAM = 0, 1
SHUFFLE_ROUNDS = 8  # rounds of grain's index_shuffle permutation


def epoch_seed(seed: int, stream: int, epoch: int) -> int:
    """A 32-bit permutation seed drawn from (data seed, stream, epoch)."""
    return int(np.random.SeedSequence([seed, stream, epoch]).generate_state(1)[0])


def shuffled_rows(indices: range, n_rows: int, seed: int, stream: int) -> list[int]:
    """The packed rows at global positions `indices` of a stream reshuffled every `n_rows` positions."""
    rows = []
    seeds: dict[int, int] = {}  # a batch spans at most a few epochs; derive each seed once
    for index in indices:
        epoch, position = divmod(index, n_rows)
        if epoch not in seeds:
            seeds[epoch] = epoch_seed(seed, stream, epoch)
        rows.append(index_shuffle(position, max_index=n_rows - 1, seed=seeds[epoch], rounds=SHUFFLE_ROUNDS))
    return rows


class Prefetcher:
    """Builds batches for the next `depth` steps in a background thread while the caller trains."""

    def __init__(self, build: Callable[[int], dict[str, np.ndarray]], depth: int):
        self.build = build
        self.depth = depth
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scalelab-prefetch")
        self.pending: dict[int, concurrent.futures.Future] = {}

    def get(self, step: int) -> dict[str, np.ndarray]:
        """The batch for `step`, then queue the following steps (a jump in steps drops stale work)."""
        future = self.pending.pop(step, None)
        for stale in [s for s in self.pending if not step < s <= step + self.depth]:
            self.pending.pop(stale).cancel()
        for ahead in range(step + 1, step + 1 + self.depth):
            if ahead not in self.pending:
                self.pending[ahead] = self.pool.submit(self.build, ahead)
        return future.result() if future is not None else self.build(step)

    def close(self) -> None:
        """Stop the background thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)


class TfdsSource:
    """Packed rows of a prepared dataset's token store, step-indexed and sharded by process."""

    def __init__(self, cfg, process_index: int = 0, process_count: int = 1, store: TokenStore | None = None):
        data = cfg.data
        self.store = store or find_store(data, cfg.model.vocab_size)
        if self.store.meta["vocab_size"] != cfg.model.vocab_size:
            raise DataError(
                f"model.vocab_size ({cfg.model.vocab_size}) differs from the tokenizer at {self.store.path} "
                f"({self.store.meta['vocab_size']} pieces); they must be equal"
            )
        self.seed = data.seed
        self.seq_len = cfg.train.seq_len
        self.batch_size = cfg.train.batch_size
        self.segments = data.segment_ids
        self.eos_id = self.store.meta["eos_id"]
        self.rows = process_rows(self.batch_size, process_index, process_count)
        self.train = self.store.stream("train")
        self.eval = self.store.stream("eval")
        self.n_train = num_rows(len(self.train), self.seq_len)
        self.n_eval = num_rows(len(self.eval), self.seq_len)
        for role, n in (("train", self.n_train), ("eval", self.n_eval)):
            if n == 0:  # only a split whose documents are all empty (possible in catalog data) has no row
                split = self.store.meta["splits"][role]["split"]
                raise DataError(f"{self.store.path}: the {split} split holds no tokens, only empty documents")
        self.prefetcher = Prefetcher(self._train_batch, data.prefetch) if data.prefetch else None

    def _global_positions(self, index: int) -> range:
        start = index * self.batch_size
        return range(start + self.rows.start, start + self.rows.stop)

    def _train_batch(self, step: int) -> dict[str, np.ndarray]:
        rows = shuffled_rows(self._global_positions(step), self.n_train, self.seed, TRAIN_STREAM)
        return pack_rows(self.train, rows, self.seq_len, self.eos_id, self.segments)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the training batch at `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.prefetcher.get(step) if self.prefetcher else self._train_batch(step)

    def eval_batch(self, index: int) -> dict[str, np.ndarray]:
        """This process's rows of validation batch `index` (a fixed shuffle of the held-out rows)."""
        rows = shuffled_rows(self._global_positions(index), self.n_eval, self.seed, EVAL_STREAM)
        return pack_rows(self.eval, rows, self.seq_len, self.eos_id, self.segments)

    def close(self) -> None:
        """Stop background prefetching."""
        if self.prefetcher:
            self.prefetcher.close()
