"""Packing: documents joined into one token stream and cut into fixed-length rows.

Each document is preceded by EOS, so EOS both ends the previous document (as a target) and
starts the next (as an input). Row k of a stream is the window stream[k*T : k*T + T + 1]:
inputs are its first T tokens and targets the last T, so consecutive rows share one token
and every token after the first is a target exactly once. The last row is padded with
weight 0 rather than dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD_ID = 0  # what padding holds; its weight is 0, so the id never reaches the loss


def join_documents(documents: Sequence[Sequence[int]], eos_id: int, dtype: np.dtype) -> np.ndarray:
    """One stream of `documents`, each preceded by EOS."""
    total = sum(len(doc) + 1 for doc in documents)
    stream = np.empty(total, dtype)
    at = 0
    for doc in documents:
        stream[at] = eos_id
        stream[at + 1 : at + 1 + len(doc)] = doc
        at += len(doc) + 1
    return stream


def num_rows(n_tokens: int, seq_len: int) -> int:
    """How many rows of length `seq_len` a stream of `n_tokens` tokens packs into."""
    return max(0, -(-(n_tokens - 1) // seq_len))


def pack_rows(stream: np.ndarray, rows: Sequence[int], seq_len: int, eos_id: int, segments: bool) -> dict:
    """The batch made of rows `rows` of `stream`, with segment ids and positions if `segments`."""
    tokens = np.full((len(rows), seq_len + 1), PAD_ID, np.int32)
    lengths = np.empty(len(rows), np.int64)
    for i, row in enumerate(rows):
        window = stream[row * seq_len : row * seq_len + seq_len + 1]
        tokens[i, : len(window)] = window
        lengths[i] = len(window)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    column = np.arange(seq_len)
    weights = column[None, :] < (lengths[:, None] - 1)
    batch = {"inputs": inputs, "targets": targets, "weights": weights.astype(np.float32)}
    if segments:
        # A segment starts at each EOS (a document's first token) and at the row's first column,
        # where a document cut by the previous row continues; padding gets segment 0.
        starts = (inputs == eos_id) | (column == 0)[None, :]
        batch["segment_ids"] = (np.cumsum(starts, axis=1) * weights).astype(np.int32)
        begin = np.maximum.accumulate(np.where(starts, column[None, :], 0), axis=1)
        batch["positions"] = ((column[None, :] - begin) * weights).astype(np.int32)
    return batch
