"""Bad post-training input: each case is one PostTrainDataError (or ConfigError) naming the file, the line and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from scalelab.posttrain.chat import DEFAULT_TEMPLATE, write_template
from scalelab.posttrain.encode import Encoder, pack, row_batch, sequence
from scalelab.posttrain.records import PostTrainDataError, read_examples, read_pairs, read_prompts
from tests.posttrain.conftest import write_lines


class Chars:
    """A tokenizer stand-in: one id per character (ids 10+), EOS = 1."""

    eos_id = 1

    def encode(self, text: str) -> list[int]:
        return [10 + ord(c) % 50 for c in text]


def test_malformed_json_and_missing_fields_name_file_and_line(tmp_path):
    bad = write_lines(tmp_path / "a.jsonl", [{"prompt": "p", "completion": "c"}, "", "{not json"])
    with pytest.raises(PostTrainDataError, match=rf"{bad}:3: not valid JSON"):
        read_examples(bad)
    missing = write_lines(tmp_path / "b.jsonl", [{"prompt": "p"}])
    with pytest.raises(PostTrainDataError, match=rf"{missing}:1: missing field 'completion'"):
        read_examples(missing)
    chat = write_lines(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(PostTrainDataError, match=rf"{chat}:1: the last message must be a non-empty assistant"):
        read_examples(chat)


def test_empty_completion_and_identical_pair_are_refused(tmp_path):
    empty = write_lines(tmp_path / "a.jsonl", [{"prompt": "p", "completion": " "}])
    with pytest.raises(PostTrainDataError, match=rf"{empty}:1: field 'completion' is empty"):
        read_examples(empty)
    same = write_lines(
        tmp_path / "b.jsonl",
        [{"prompt": "p", "chosen": "x", "rejected": "y"}] * 2 + [{"prompt": "p", "chosen": "z", "rejected": "z"}],
    )
    with pytest.raises(PostTrainDataError, match=rf"{same}:3: 'chosen' equals 'rejected'"):
        read_pairs(same)


def test_a_too_long_example_is_refused_or_truncated_from_the_prompts_start():
    with pytest.raises(PostTrainDataError, match=r"f.jsonl:7: prompt and completion take 9 tokens, more than "):
        sequence([5, 6, 7, 8, 9], [20, 21, 22], 1, 8, "refuse", "f.jsonl:7")
    cut = sequence([5, 6, 7, 8, 9], [20, 21, 22], 1, 8, "truncate", "f.jsonl:7")
    np.testing.assert_array_equal(cut.inputs, [1, 6, 7, 8, 9, 20, 21, 22])  # the prompt's first token dropped
    np.testing.assert_array_equal(cut.targets, [6, 7, 8, 9, 20, 21, 22, 1])
    np.testing.assert_array_equal(cut.weights, [0, 0, 0, 0, 1, 1, 1, 1])  # completion and final EOS only


def test_chat_needs_the_template_stored_with_the_tokenizer(tmp_path):
    chat = read_examples(
        write_lines(
            tmp_path / "chat.jsonl",
            [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
        )
    )[0]
    encoder = Encoder(Chars(), tmp_path, 64, "refuse")
    with pytest.raises(PostTrainDataError, match=r"has no chat template .* scalelab chat-template"):
        encoder.example(chat)
    write_template(tmp_path)
    prompt, completion = encoder.texts(chat)
    assert prompt == "User: hi\n" + DEFAULT_TEMPLATE["generation_prompt"] and completion == "yo"


def test_packing_gives_each_example_its_segment_and_positions():
    seqs = [sequence([5, 6], [7], 1, 8, "refuse", "x"), sequence([], [8, 9], 1, 8, "refuse", "y")]
    rows = pack(seqs * 3, 8)
    assert rows == [[0, 1], [2, 3], [4, 5]]
    batch = row_batch([[seqs[r] for r in rows[0]]], 8)
    # EOS 5 6 7 | EOS 8 9, then padding: prompt targets (5, 6) and padding weigh 0
    np.testing.assert_array_equal(batch["inputs"][0], [1, 5, 6, 7, 1, 8, 9, 0])
    np.testing.assert_array_equal(batch["segment_ids"][0], [1, 1, 1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(batch["positions"][0], [0, 1, 2, 3, 0, 1, 2, 0])
    np.testing.assert_array_equal(batch["weights"][0], [0, 0, 1, 1, 1, 1, 1, 0])


def test_a_folder_bytes_that_are_not_utf8_and_a_byte_order_mark(tmp_path):
    with pytest.raises(PostTrainDataError, match=rf"{tmp_path} is a directory, not a file; posttrain.eval_file must"):
        read_examples(tmp_path, "posttrain.eval_file")
    with pytest.raises(PostTrainDataError, match=rf"{tmp_path / 'no.jsonl'} does not exist; PROMPTS must name"):
        read_prompts(tmp_path / "no.jsonl", "PROMPTS")
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    with pytest.raises(PostTrainDataError, match=rf"{latin}:2: not UTF-8 text \(byte 16 of the line\)"):
        read_examples(latin)
    bom = tmp_path / "bom.jsonl"  # as some editors save UTF-8
    bom.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\r\n')
    assert [(e.prompt, e.completion) for e in read_examples(bom)] == [("a", "b")]
