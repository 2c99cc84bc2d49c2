"""Packing keeps every token, shifts targets by one and marks documents with segments and positions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.data.packing import PAD_ID, join_documents, num_rows, pack_rows

EOS = 1
documents = st.lists(st.lists(st.integers(2, 999), max_size=40), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(docs=documents, seq_len=st.integers(1, 33), segments=st.booleans())
def test_packing_keeps_every_token(docs, seq_len, segments):
    stream = join_documents(docs, EOS, np.dtype("<u2"))
    assert stream.tolist() == [t for doc in docs for t in [EOS, *doc]]
    rows = num_rows(len(stream), seq_len)
    batch = pack_rows(stream, list(range(rows)), seq_len, EOS, segments)
    weights = batch["weights"].astype(bool)
    # Every token but the first is a target exactly once, in order; padding is never a target.
    assert batch["targets"][weights].tolist() == stream[1:].tolist()
    assert batch["inputs"][weights].tolist() == stream[:-1].tolist()
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    assert (~weights).sum() == rows * seq_len - (len(stream) - 1)  # only the last row is padded
    if segments:
        check_segments(batch, EOS)


def check_segments(batch, eos):
    """Segment ids and positions against a plain per-row reading of the inputs."""
    for inputs, weights, segment_ids, positions in zip(
        batch["inputs"], batch["weights"], batch["segment_ids"], batch["positions"], strict=True
    ):
        segment, position = 0, 0
        for t, token in enumerate(inputs):
            if not weights[t]:
                assert segment_ids[t] == 0 and positions[t] == 0
                continue
            if t == 0 or token == eos:
                segment, position = segment + 1, 0
            assert segment_ids[t] == segment and positions[t] == position
            position += 1


def test_segments_restart_at_each_document():
    stream = join_documents([[5, 6, 7], [8, 9], [10]], EOS, np.dtype("<u2"))  # 1 5 6 7 1 8 9 1 10
    batch = pack_rows(stream, [0, 1], 4, EOS, segments=True)
    np.testing.assert_array_equal(batch["inputs"], [[1, 5, 6, 7], [1, 8, 9, 1]])
    np.testing.assert_array_equal(batch["targets"], [[5, 6, 7, 1], [8, 9, 1, 10]])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 1], [1, 1, 1, 2]])
    np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 3], [0, 1, 2, 0]])
    assert batch["weights"].all()
    assert {k: v.dtype for k, v in batch.items()} == {
        "inputs": np.int32,
        "targets": np.int32,
        "weights": np.float32,
        "segment_ids": np.int32,
        "positions": np.int32,
    }


def test_last_row_is_padded_not_dropped():
    stream = join_documents([[5, 6, 7, 8, 9]], EOS, np.dtype("<u2"))  # 6 tokens -> 5 targets
    assert num_rows(len(stream), 4) == 2
    batch = pack_rows(stream, [1], 4, EOS, segments=False)
    np.testing.assert_array_equal(batch["inputs"], [[8, 9, PAD_ID, PAD_ID]])
    np.testing.assert_array_equal(batch["weights"], [[1, 0, 0, 0]])
    assert set(batch) == {"inputs", "targets", "weights"}
