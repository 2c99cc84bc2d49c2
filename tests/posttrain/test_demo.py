"""The RLHF demonstration's steps: corpus prompts, VADER-labelled pairs part 1's reader accepts, the judge's output."""

import json

import numpy as np
import pytest

from scalelab.errors import UserError
from scalelab.posttrain.demo import (
    HELDOUT_FILE,
    PAIRS_FILE,
    PROMPTS_FILE,
    SFT_FILE,
    DemoData,
    prompt_rows,
    write_demo_data,
    write_pairs,
)
from scalelab.posttrain.demo_judge import Judged, judge, markdown, plot, word_stats
from scalelab.posttrain.records import read_examples, read_pairs
from scalelab.posttrain.runs import WrongRunKindError
from scalelab.posttrain.sentiment import vader
from scalelab.train.config_io import config_from_dict


def test_demo_data_and_vader_pairs_from_a_run(text_base, tmp_path):
    base, pretrained = text_base
    spec = DemoData(sft=20, prompts=30, heldout=5, prompt_words=2, completion_words=3, min_words=4)
    counts = write_demo_data(tmp_path, spec, config_from_dict(base).data)
    assert counts == {SFT_FILE: 20, PROMPTS_FILE: 30, HELDOUT_FILE: 5}
    examples = read_examples(tmp_path / SFT_FILE)  # part 1's SFT reader takes them as they are
    assert all(len(e.prompt.split()) == 2 and 1 <= len(e.completion.split()) <= 3 for e in examples)
    assert all(json.loads(line)["prompt"] for line in (tmp_path / PROMPTS_FILE).read_text().splitlines())

    # The test corpus's made-up words carry little sentiment, so many pairs tie (VADER 0 and 0) and are skipped.
    counts = write_pairs(pretrained, tmp_path / PROMPTS_FILE, tmp_path, new_tokens=4, min_margin=0.1)
    kept = counts[PAIRS_FILE] + counts["pairs-heldout.jsonl"]
    assert counts["ties_skipped"] + counts["below_min_margin"] + kept == 30 and counts["min_margin"] == 0.1
    if counts[PAIRS_FILE]:
        for pair in read_pairs(tmp_path / PAIRS_FILE):  # part 1's preference reader accepts the file
            assert vader([pair.chosen])[0] - vader([pair.rejected])[0] >= 0.1


def test_pairs_refuse_an_impossible_min_margin_before_sampling(tmp_path):
    with pytest.raises(UserError, match=r"min_margin -0.1 is outside \[0, 2\)"):
        write_pairs(tmp_path / "no-such-run", tmp_path / "prompts.jsonl", tmp_path, new_tokens=4, min_margin=-0.1)


def test_prompt_rows_start_with_eos_and_refuse_prompts_that_leave_no_room():
    class Tok:
        eos_id = 1

        def encode(self, text):
            return [5] * len(text.split())

    rows, lengths = prompt_rows(Tok(), ["a b", "a b c"], room=4)
    np.testing.assert_array_equal(rows, [[1, 5, 5, 0], [1, 5, 5, 5]])
    np.testing.assert_array_equal(lengths, [3, 4])
    with pytest.raises(UserError, match="a prompt takes 4 tokens, more than the 3"):
        prompt_rows(Tok(), ["a b c"], room=3)


def test_word_stats_expose_a_repeated_positive_word():
    stats = word_stats(["good good good love", "the good day"])
    assert stats["top_words"][0] == ["good", pytest.approx(4 / 7, abs=1e-4)]
    assert stats["distinct_word_share"] == pytest.approx(4 / 7)
    assert stats["repeated_within_continuation"] == pytest.approx((0.5 + 0.0) / 2)


def test_judge_outputs_name_every_run(tmp_path):
    words = word_stats(["good day"])
    judged = [
        Judged("sft", "sft", None, 0.02, 0.01, 0.1, 0.0, 0.0, words, [["To be", " or not"]], []),
        Judged(
            "ppo-beta0.05",
            "ppo",
            0.05,
            0.45,
            0.01,
            0.7,
            11.3,
            0.2,
            words,
            [["To be", " good"]],
            [[0.0, -1.0], [5.0, 2.0]],
        ),
    ]
    sft = {"pretrained_run": "pre", "heldout_examples": 9, "completion_tokens": 40, "pretrained_loss": 4.5}
    summary = {"heldout_prompts": 1, "samples_per_prompt": 1, "new_tokens": 4, "reference": "sft"}
    text = markdown(judged, {**summary, "sft_target": {**sft, "sft_loss": 3.25, "met": True}})
    assert "| ppo-beta0.05 | ppo | 0.05 | +0.450 ± 0.010 | 70% | 11.30 ± 0.20 |" in text
    assert (
        "SFT target: held-out completion loss 3.250 (SFT) is below 4.500 (pre-trained pre) on the SFT run's 9 " in text
    )
    missed = markdown(judged, {**summary, "sft_target": {**sft, "sft_loss": 4.75, "met": False}})
    assert "4.750 (SFT) is NOT below 4.500" in missed
    paths = plot(judged, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_sentiment_inputs_are_checked_before_any_sampling(text_base, reward_run, tmp_path):
    base, pretrained = text_base
    rm, pairs = reward_run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the sun"}\n')
    with pytest.raises(UserError, match="--sft must be at least 1, got -5"):  # it sliced the prompts' share
        write_demo_data(tmp_path, DemoData(sft=-5), config_from_dict(base).data)
    with pytest.raises(UserError, match="--new-tokens must be at least 1, got 0"):  # it wrote empty pair files
        write_pairs(pretrained, prompts, tmp_path, new_tokens=0, min_margin=0.5)
    with pytest.raises(WrongRunKindError, match=rf"SFT_RUN {rm} is a reward-model run"):
        write_pairs(rm, prompts, tmp_path, new_tokens=4, min_margin=0.5)
    with pytest.raises(UserError, match=r"--new-tokens 1000 leaves no room for a prompt in model.max_seq_len=32"):
        write_pairs(pretrained, prompts, tmp_path, new_tokens=1000, min_margin=0.5)
    with pytest.raises(UserError, match="--samples must be at least 1, got 0"):  # a traceback before
        judge([pretrained], pretrained, prompts, tmp_path / "out", 4, samples=0)
    with pytest.raises(WrongRunKindError, match=rf"--reference {rm} is a reward-model run"):
        judge([pretrained], rm, prompts, tmp_path / "out", 4)
    with pytest.raises(WrongRunKindError, match=rf"RUN_DIR {tmp_path / 'nope'} does not exist"):
        judge([pretrained, tmp_path / "nope"], pretrained, prompts, tmp_path / "out", 4)
    with pytest.raises(WrongRunKindError, match=rf"--reward-model {pretrained} is not a reward model"):
        judge([pretrained], pretrained, prompts, tmp_path / "out", 4, reward=(pretrained, pairs))
    assert not list(tmp_path.glob("pairs*.jsonl")) and not (tmp_path / "out").exists()
