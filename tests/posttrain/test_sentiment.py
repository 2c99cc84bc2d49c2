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
    # Two neutral continuations tie at 0; identical ones carry no preference.
    assert skipped == {"ties_skipped": 2, "below_min_margin": 0}


def test_pairs_whose_vader_scores_differ_by_less_than_the_min_margin_are_dropped():
    prompts, first, second = ["A", "B"], [" I hate thee", " the good door"], [" I love thee well", " the door"]
    hate, love, good_door, door = vader([first[0], second[0], first[1], second[1]])
    assert love - hate > 1.0 and 0.0 < good_door - door < 0.5
    records, dropped = label_pairs(prompts, first, second, min_margin=0.5)
    assert [r["prompt"] for r in records] == ["A"] and dropped == {"ties_skipped": 0, "below_min_margin": 1}
    assert len(label_pairs(prompts, first, second, min_margin=0.0)[0]) == 2
    with pytest.raises(UserError, match=r"min_margin 2.0 is outside \[0, 2\)"):
        label_pairs(prompts, first, second, min_margin=2.0)


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
