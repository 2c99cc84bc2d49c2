"""A learnable synthetic language: a sparse random Markov chain over the vocabulary.

Each token has `branching` equally likely successors, so the best achievable loss is
log(branching) nats, far below the log(vocab) of an untrained model. The reserved ids that the
run's objective writes ([MASK], the span sentinels: data/special.py) are left out of the
language, so the model can tell them from text.
"""

from __future__ import annotations

import numpy as np

from scalelab.data import process_rows
from scalelab.data.objectives import special_ids

TRAIN_STREAM, EVAL_STREAM = 0, 1


class MarkovSource:
    """Step-indexed batches of Markov-chain text; each batch is drawn from (seed, stream, index)."""

    def __init__(self, cfg, process_index: int = 0, process_count: int = 1):
        self.vocab_size = cfg.model.vocab_size
        self.batch_size = cfg.train.batch_size
        self.seq_len = cfg.train.seq_len
        self.seed = cfg.data.seed
        self.rows = process_rows(self.batch_size, process_index, process_count)
        special = special_ids(cfg)
        # With nothing reserved (causal_lm, prefix_lm) the alphabet is every id and the draws are as they always were.
        self.alphabet = np.setdiff1d(np.arange(self.vocab_size), special.reserved if special else ())
        table_rng = np.random.default_rng([self.seed, 0x5CA1E])
        branching = min(cfg.data.synthetic_branching, len(self.alphabet))
        self.successors = np.stack(
            [table_rng.choice(self.alphabet, size=branching, replace=False) for _ in range(self.vocab_size)]
        )

    @property
    def entropy(self) -> float:
        """The chain's per-token entropy in nats: the lowest loss a model can reach."""
        return float(np.log(self.successors.shape[1]))

    def _draw(self, stream: int, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, stream, index])
        tokens = np.empty((self.batch_size, self.seq_len + 1), np.int32)
        tokens[:, 0] = self.alphabet[rng.integers(len(self.alphabet), size=self.batch_size)]
        choices = rng.integers(self.successors.shape[1], size=(self.batch_size, self.seq_len))
        for t in range(self.seq_len):
            tokens[:, t + 1] = self.successors[tokens[:, t], choices[:, t]]
        tokens = tokens[self.rows]
        return {
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "weights": np.ones((tokens.shape[0], self.seq_len), np.float32),
        }

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the training batch at `step`."""
        return self._draw(TRAIN_STREAM, step)

    def eval_batch(self, index: int) -> dict[str, np.ndarray]:
        """This process's rows of validation batch `index` (a stream disjoint from training)."""
        return self._draw(EVAL_STREAM, index)
