"""A programmatic "human" for the RLHF demonstration: the VADER sentiment lexicon scores continuations.

VADER (Hutto and Gilbert 2014, `vaderSentiment` on PyPI) gives each text a compound score in
[-1, 1]. Training never calls it: it labels preference pairs (the reward model learns from the
pairs alone) and judges the tuned policies on held-out prompts.

Prompts are openings of lines of the embedded corpus: the first few words of a line of verse or
dialogue (stage directions, headings and speaker names skipped, Bible verse numbers dropped).
Training prompts come from the train split, held-out ones from the validation split, so a judged
prompt was never a training prompt.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.errors import UserError

VERSE_NUMBER = re.compile(r"^\d+\s+")
WORD = re.compile(r"[A-Za-z]")


@functools.cache
def _analyzer() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(texts: Iterable[str]) -> np.ndarray:
    """VADER's compound score in [-1, 1] of each text (0 for an empty one)."""
    analyzer = _analyzer()
    return np.array([analyzer.polarity_scores(text)["compound"] if text.strip() else 0.0 for text in texts])


def usable_line(line: str, min_words: int) -> str | None:
    """A line of running text with at least `min_words` words, verse number dropped; None for headings,
    stage directions and speaker names."""
    line = VERSE_NUMBER.sub("", line.strip())
    if not line or line.startswith(("[", "SCENE", "Scene", "ACT", "Act ")) or line.isupper():
        return None
    words = line.split()
    if len(words) < min_words or sum(bool(WORD.search(w)) for w in words) < min_words:
        return None
    return line


def corpus_lines(texts: Iterable[str], min_words: int) -> list[str]:
    """Every usable line of the documents, in order."""
    return [kept for text in texts for line in text.splitlines() if (kept := usable_line(line, min_words))]


def openings(lines: Sequence[str], count: int, prompt_words: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, rest of the line) for `count` lines drawn without replacement: the prompt is the line's first
    `prompt_words` words, the rest what the corpus says next."""
    if len(lines) < count:
        raise UserError(
            f"asked for {count} prompts but the corpus split has only {len(lines)} usable lines; ask for fewer"
        )
    picked = np.random.default_rng(seed).choice(len(lines), size=count, replace=False)
    pairs = []
    for index in sorted(picked.tolist()):
        words = lines[index].split()
        pairs.append((" ".join(words[:prompt_words]), " " + " ".join(words[prompt_words:])))
    return pairs


def split_lines(split: str, min_words: int, data: Any = None) -> list[str]:
    """Usable lines of one split (train or validation) of the prepared default corpus (or the DataConfig given)."""
    from scalelab.data.config import DataConfig
    from scalelab.data.reader import TextSplit, require_dataset

    data = data or DataConfig(source="tfds", name="scalelab_text")
    return corpus_lines(TextSplit(require_dataset(data), split).texts(), min_words)


def check_min_margin(min_margin: float) -> None:
    """Refuse a margin no pair of VADER compound scores (each in [-1, 1]) could meet, or a negative one."""
    if not 0.0 <= min_margin < 2.0:
        raise UserError(f"min_margin {min_margin} is outside [0, 2), the range of a VADER difference; give one inside")


def label_pairs(
    prompts: Sequence[str], first: Sequence[str], second: Sequence[str], min_margin: float = 0.0
) -> tuple[list[dict], dict[str, int]]:
    """Preference records {"prompt", "chosen", "rejected"}: the continuation VADER scores higher is chosen.

    Ties (equal scores, e.g. two neutral texts) and identical continuations carry no preference and are
    skipped. A pair whose VADER scores differ by less than `min_margin` is dropped too: such near-ties
    are the labeller's noise (which of two nearly neutral lines is "more positive" is close to a coin
    flip), the way a human preference set drops pairs its labellers barely agreed on. Returns
    (records, {"ties_skipped": n, "below_min_margin": m}).
    """
    check_min_margin(min_margin)
    a, b = vader(first), vader(second)
    records, dropped = [], {"ties_skipped": 0, "below_min_margin": 0}
    for prompt, x, y, sx, sy in zip(prompts, first, second, a, b, strict=True):
        if sx == sy or x == y or not x.strip() or not y.strip():
            dropped["ties_skipped"] += 1
            continue
        if abs(sx - sy) < min_margin:
            dropped["below_min_margin"] += 1
            continue
        chosen, rejected = (x, y) if sx > sy else (y, x)
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return records, dropped


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Write one JSON object per line; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
