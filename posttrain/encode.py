"""Examples and preference pairs as token sequences whose loss falls on the completion only.

A sequence is EOS, the prompt, the completion, EOS: the leading EOS is what pre-training put
before every document, and the trailing one teaches the model to stop. As a language-modelling
row its inputs are all but the last token and its targets all but the first; a target's weight
is 1 when it is a completion token (or the final EOS), 0 when it is a prompt token.

A sequence with more than train.seq_len inputs is refused (posttrain.overflow=refuse, the
default: the error names the line), or truncated (posttrain.overflow=truncate): the prompt loses
its first tokens, keeping the part nearest the completion, and a completion that alone does not
fit is cut at its end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.posttrain.chat import load_template, render
from scalelab.posttrain.records import Example, Pair, PostTrainDataError


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One sequence: model inputs, next-token targets and loss weights, all of the same length (<= seq_len)."""

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray


def sequence(prompt: list[int], completion: list[int], eos: int, seq_len: int, overflow: str, where: str) -> Encoded:
    """The row of EOS + prompt + completion + EOS, fitted to `seq_len` inputs by `overflow`."""
    if not completion:
        raise PostTrainDataError(f"{where}: the completion encodes to no tokens; give it text or remove the line")
    length = len(prompt) + len(completion) + 1
    if length > seq_len:
        if overflow == "refuse":
            raise PostTrainDataError(
                f"{where}: prompt and completion take {length} tokens, more than train.seq_len={seq_len}; shorten "
                "them, raise train.seq_len, or set posttrain.overflow=truncate (drops the prompt's first tokens)"
            )
        completion = completion[: seq_len - 1]
        room = seq_len - 1 - len(completion)
        prompt = prompt[len(prompt) - room :] if room > 0 else []
    tokens = np.asarray([eos, *prompt, *completion, eos], np.int32)
    weights = np.zeros(len(tokens) - 1, np.float32)
    weights[len(prompt) :] = 1.0  # targets from the completion's first token to the final EOS
    return Encoded(tokens[:-1], tokens[1:], weights)


class Encoder:
    """Turns records into sequences with one tokenizer (and its chat template, read when first needed)."""

    def __init__(self, tokenizer: Any, tokenizer_dir: Path, seq_len: int, overflow: str):
        self.tokenizer, self.tokenizer_dir = tokenizer, Path(tokenizer_dir)
        self.seq_len, self.overflow = seq_len, overflow
        self._template: dict[str, str] | None = None

    def texts(self, example: Example) -> tuple[str, str]:
        """(prompt, completion) text of a prompt/completion or chat example."""
        if example.messages is None:
            return example.prompt or "", example.completion or ""
        if self._template is None:
            self._template = load_template(self.tokenizer_dir)
        return render(example.messages, self._template)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text)) if text else []

    def example(self, example: Example) -> Encoded:
        prompt, completion = self.texts(example)
        return sequence(
            self._ids(prompt), self._ids(completion), self.tokenizer.eos_id, self.seq_len, self.overflow, example.where
        )

    def pair(self, pair: Pair) -> tuple[Encoded, Encoded]:
        prompt = self._ids(pair.prompt)
        eos = self.tokenizer.eos_id
        return (
            sequence(prompt, self._ids(pair.chosen), eos, self.seq_len, self.overflow, pair.where),
            sequence(prompt, self._ids(pair.rejected), eos, self.seq_len, self.overflow, pair.where),
        )


def pack(sequences: list[Encoded], seq_len: int) -> list[list[int]]:
    """Greedy packing in order: the indices of the sequences each row of `seq_len` holds."""
    rows: list[list[int]] = []
    used = seq_len
    for index, seq in enumerate(sequences):
        if used + len(seq.inputs) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += len(seq.inputs)
    return rows


def row_batch(rows: list[list[Encoded]], seq_len: int) -> dict[str, np.ndarray]:
    """A batch of rows, each holding its sequences side by side: segment ids 1, 2, ... keep them apart in
    attention, positions restart at each, and padding has segment 0 and weight 0."""
    batch = {
        "inputs": np.zeros((len(rows), seq_len), np.int32),
        "targets": np.zeros((len(rows), seq_len), np.int32),
        "weights": np.zeros((len(rows), seq_len), np.float32),
        "segment_ids": np.zeros((len(rows), seq_len), np.int32),
        "positions": np.zeros((len(rows), seq_len), np.int32),
    }
    for r, row in enumerate(rows):
        at = 0
        for segment, seq in enumerate(row, start=1):
            span = slice(at, at + len(seq.inputs))
            batch["inputs"][r, span] = seq.inputs
            batch["targets"][r, span] = seq.targets
            batch["weights"][r, span] = seq.weights
            batch["segment_ids"][r, span] = segment
            batch["positions"][r, span] = np.arange(len(seq.inputs))
            at = span.stop
    return batch
