"""The VADER labeller and the corpus openings it is asked about."""

import json

import pytest

from scalelab.errors import UserError
from scalelab.posttrain.sentiment import corpus_lines, label_pairs, openings, vader, write_jsonl


def test_vader_scores_praise_above_grief_and_empty_text_as_neutral():
    good, bad, empty = vader(["O happy day, most sweet and gentle love", "cursed be this wretched, hateful grief", " "])
    assert good > 0.5 and bad < -0.5 and empty == 0.0


def test_pairs_choose_the_more_positive_continuation_and_skip_ties():
    records, skipped = label_pairs(
        ["My lord,", "And he", "Then", "So"],
        [" I hate thee", " was glad and blessed", " the door", " same"],
        [" I love thee well", " wept in sorrow", " the wall", " same"],
    )
    assert records == [
        {"prompt": "My lord,", "chosen": " I love thee well", "rejected": " I hate thee"},
        {"prompt": "And he", "chosen": " was glad and blessed", "rejected": " wept in sorrow"},
    ]
    assert skipped == 2  # two neutral continuations tie at 0; identical ones carry no preference


def test_openings_skip_headings_directions_and_speakers_and_drop_verse_numbers():
    text = "SCENE II. A room.\n\n[Enter HAMLET.]\n\nHAMLET.\nO that this too too solid flesh would melt\n"
    bible = "Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n"
    lines = corpus_lines([text, bible], min_words=6)
    assert lines == [
        "O that this too too solid flesh would melt",
        "In the beginning God created the heaven and the earth.",
    ]
    picked = openings(lines, 2, prompt_words=3, seed=0)
    assert picked == [
        ("O that this", " too too solid flesh would melt"),
        ("In the beginning", " God created the heaven and the earth."),
    ]
    with pytest.raises(UserError, match="only 2 usable lines"):
        openings(lines, 3, prompt_words=3, seed=0)


def test_write_jsonl_writes_one_object_per_line(tmp_path):
    path = tmp_path / "pairs" / "train.jsonl"
    assert write_jsonl(path, [{"prompt": "a", "chosen": "é", "rejected": "c"}]) == 1
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        {"prompt": "a", "chosen": "é", "rejected": "c"}
    ]
