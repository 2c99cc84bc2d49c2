"""`scalelab generate` end to end: train a few steps into a run directory, then continue prompts."""

from __future__ import annotations

import numpy as np
import pytest

from scalelab.cli import main
from scalelab.data.objectives import START_ID
from scalelab.errors import UserError
from scalelab.inference.decode import generate
from scalelab.inference.generate import load_run, parse_ids
from scalelab.train.config_io import config_from_dict, load_config, save_config, to_dict
from scalelab.train.loop import train
from tests.data.conftest import VOCAB, make_cfg, make_documents, write_jsonl

FAST = ["logging.progress=false", "logging.peak_flops=1e12", "checkpoint.every=4", "checkpoint.async_save=false"]


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A gpt-tiny run on the synthetic source, 4 steps, one checkpoint."""
    run_dir = tmp_path_factory.mktemp("synthetic") / "run"
    overrides = [*FAST, "train.steps=4", "train.eval_every=0", "schedule.warmup_steps=1", "model.n_kv_heads=2"]
    train(load_config("gpt-tiny", overrides), run_dir, quiet=True)
    return run_dir


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    """A t5-tiny run (span corruption) on the synthetic source, 4 steps, one checkpoint."""
    run_dir = tmp_path_factory.mktemp("t5") / "run"
    overrides = [*FAST, "train.steps=4", "train.eval_every=0", "schedule.warmup_steps=1"]
    train(load_config("t5-tiny", overrides), run_dir, quiet=True)
    return run_dir


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny gpt run on a prepared text dataset with its tokenizer, 4 steps, one checkpoint."""
    from scalelab.data.builder import prepare_dataset
    from scalelab.data.tokens import build_store

    root = tmp_path_factory.mktemp("text")
    corpus = write_jsonl(root / "corpus" / "docs.jsonl", make_documents(120))
    cfg = make_cfg(root / "data", corpus=str(corpus))
    prepare_dataset(cfg.data, progress=False)
    build_store(cfg.data, VOCAB, progress=False)
    overrides = [*FAST, "train.steps=4", "train.eval_every=0", "schedule.warmup_steps=1", "model.max_seq_len=48"]
    run_dir = root / "run"
    train(config_from_dict(to_dict(cfg), overrides), run_dir, quiet=True)
    return run_dir


def _generate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["generate", *[str(a) for a in args]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ids_in_ids_out_on_a_synthetic_run_greedy_and_reproducible(synthetic_run, capsys):
    args = [
        synthetic_run,
        "--prompt-ids",
        "3,17,42",
        "--prompt-ids",
        "5",
        "--max-new-tokens",
        "6",
        "--temperature",
        "0",
    ]
    code, out, err = _generate(capsys, *args)
    assert code == 0, err
    assert "step 4 of" in err and "12 tokens" in err
    lines = out.splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["3 17 42", "5"]
    continued = [[int(i) for i in line.split(" | ")[1].split()] for line in lines]
    assert all(len(ids) == 6 and all(0 <= i < 256 for i in ids) for ids in continued)

    # The command decodes exactly what the library's greedy decoder gives for the restored parameters.
    run = load_run(synthetic_run)
    padded, lengths = np.array([[3, 17, 42], [5, 0, 0]]), np.array([3, 1])
    expected = generate(run.cfg.model, run.model.graphdef, run.params, padded, lengths, new_tokens=6)
    assert continued == np.asarray(expected).tolist()
    assert _generate(capsys, *args)[1] == out


def test_sampling_follows_the_seed_and_int8_reports_its_savings(synthetic_run, capsys):
    base = [synthetic_run, "--prompt-ids", "1,2,3", "--max-new-tokens", "12", "--temperature", "1.5", "--top-k", "50"]
    a = _generate(capsys, *base, "--seed", "1")[1]
    assert _generate(capsys, *base, "--seed", "1")[1] == a
    assert _generate(capsys, *base, "--seed", "2")[1] != a
    nucleus = _generate(capsys, *base, "--seed", "1", "--top-p", "0.9")[1]  # the same draws over fewer tokens
    assert _generate(capsys, *base, "--seed", "1", "--top-p", "0.9")[1] == nucleus
    assert len(nucleus.split(" | ")[1].split()) == 12
    code, out, err = _generate(capsys, *base, "--seed", "1", "--quantize", "int8")
    assert code == 0, err
    assert "int8 weights: quantized weights" in err and "x of fp32" in err and "saved" in err
    assert len(out.split(" | ")[1].split()) == 12

    # Without --max-new-tokens: 64, or as many as fit in model.max_seq_len (64 for gpt-tiny).
    code, out, err = _generate(capsys, synthetic_run, "--prompt-ids", ",".join(["1"] * 10))
    assert code == 0, err
    assert len(out.split(" | ")[1].split()) == 54


def test_a_t5_run_reads_the_prompt_with_its_encoder_and_decodes_from_the_start_id(t5_run, capsys):
    args = [t5_run, "--prompt-ids", "3,17,42", "--prompt-ids", "5", "--max-new-tokens", "6", "--temperature", "0"]
    code, out, err = _generate(capsys, *args)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["3 17 42", "5"]
    decoded = [[int(i) for i in line.split(" | ")[1].split()] for line in lines]

    run = load_run(t5_run)
    padded, lengths = np.array([[3, 17, 42], [5, 0, 0]]), np.array([3, 1])
    expected = generate(run.cfg.model, run.model.graphdef, run.params, padded, lengths, new_tokens=6, start_id=START_ID)
    assert decoded == np.asarray(expected).tolist()

    # Without --max-new-tokens: as many as the decoder holds after its start id (63 of t5-tiny's 64).
    code, out, err = _generate(capsys, t5_run, "--prompt-ids", ",".join(["1"] * 10), "--quantize", "int8")
    assert code == 0, err
    assert len(out.split(" | ")[1].split()) == 63


def test_text_prompts_with_the_runs_tokenizer(text_run, capsys):
    prompts = ["Document 7: café\nKalo", "Su"]
    args = [text_run, "--prompt", prompts[0], "--prompt", prompts[1], "--max-new-tokens", "8", "--temperature", "0"]
    code, out, err = _generate(capsys, *args)
    assert code == 0, err

    run = load_run(text_run)
    assert run.tokenizer is not None and run.tokenizer.vocab_size == VOCAB
    ids = [run.tokenizer.encode(p) for p in prompts]
    padded = np.zeros((2, max(map(len, ids))), np.int32)
    for row, prompt in enumerate(ids):
        padded[row, : len(prompt)] = prompt
    tokens = np.asarray(
        generate(run.cfg.model, run.model.graphdef, run.params, padded, list(map(len, ids)), new_tokens=8)
    )
    texts = []
    for prompt, row in zip(prompts, tokens.tolist(), strict=True):
        row = row[: row.index(run.tokenizer.eos_id)] if run.tokenizer.eos_id in row else row
        texts.append(prompt + run.tokenizer.decode(row) + "\n\n")
    assert out == "".join(texts)

    code, out_int8, err = _generate(capsys, *args, "--quantize", "int8")
    assert code == 0, err
    assert out_int8.startswith(prompts[0])


def test_errors_name_the_problem_and_the_fix(synthetic_run, text_run, tmp_path, capsys):
    code, _, err = _generate(capsys, synthetic_run, "--prompt", "hello")
    assert code == 2 and "data.source=synthetic, which has no tokenizer" in err and "--prompt-ids" in err

    code, _, err = _generate(capsys, tmp_path / "nowhere", "--prompt-ids", "1")
    assert code == 2 and "does not exist" in err and "scalelab train wrote" in err
    (tmp_path / "afile").write_text("")
    code, _, err = _generate(capsys, tmp_path / "afile", "--prompt-ids", "1")
    assert code == 2 and f"run directory {tmp_path / 'afile'} is a file, not a directory; give a directory" in err

    bert = tmp_path / "bert"
    save_config(load_config("bert-tiny"), bert / "config.yaml")
    code, _, err = _generate(capsys, bert, "--prompt-ids", "1")
    assert (
        code == 2 and "holds a bert model" in err and "gpt (decoder-only) and t5 (encoder-decoder) models only" in err
    )

    unsaved = tmp_path / "unsaved"
    save_config(load_config("gpt-tiny"), unsaved / "config.yaml")
    code, _, err = _generate(capsys, unsaved, "--prompt-ids", "1")
    assert code == 2 and "has no checkpoints" in err and "--set checkpoint.every=100 --overwrite" in err

    code, _, err = _generate(capsys, synthetic_run, "--prompt-ids", "1," * 60 + "1", "--max-new-tokens", "8")
    assert code == 2 and "61 tokens and 8 new" in err and "model.max_seq_len=64" in err and "shorten the prompt" in err

    code, _, err = _generate(capsys, synthetic_run, "--prompt-ids", "1,999")
    assert code == 2 and "[999] are outside the vocabulary 0..255" in err

    code, _, err = _generate(capsys, text_run, "--prompt", "", "--max-new-tokens", "2")
    assert code == 2 and "a prompt is empty" in err

    code, _, err = _generate(capsys, synthetic_run, "--prompt-ids", "1," * 69 + "1")
    assert code == 2 and "the prompt has 70 tokens, which leaves no room" in err and "at most 63 tokens" in err

    code, out, err = _generate(capsys, synthetic_run, "--prompt-ids", "1", "--temperature", "nan")
    assert code == 2 and out == "" and "--temperature must be a finite number >= 0 (0 is greedy), got nan" in err

    code, out, err = _generate(capsys, synthetic_run, "--prompt-ids", "1", "--top-k", "0")
    assert code == 2 and out == "" and "--top-k must be at least 1" in err
    for bad in ("0", "1.5", "nan"):
        code, out, err = _generate(capsys, synthetic_run, "--prompt-ids", "1", "--top-p", bad)
        assert (
            code == 2
            and out == ""
            and f"--top-p must be a probability above 0 and at most 1 (1 keeps every token), got {float(bad)}" in err
        )

    # No --max-new-tokens and no room left: the message is about the prompt, not a token nobody asked for.
    code, _, err = _generate(capsys, synthetic_run, "--prompt-ids", "1," * 63 + "1")
    assert code == 2 and "the prompt has 64 tokens, which leaves no room in model.max_seq_len=64" in err
    assert "shorten it to at most 63 tokens" in err and "new tokens are asked for" not in err


def test_continuations_show_reserved_pieces_by_name():
    from scalelab.cli.generate import _continuation_text

    class Pieces:  # decodes like the real tokenizer: reserved ids are dropped unless special=True
        eos_id = 1

        def decode(self, ids, special=False):
            return "".join(f"<extra_id_{i - 3}>" if i >= 3 else "" for i in ids) if special else ""

    # A span-corruption t5 answers in sentinels; plain decoding printed an empty line.
    assert _continuation_text(Pieces(), "", np.array([3, 4, 1, 5])) == "<extra_id_0><extra_id_1>\n"


def test_a_checkpoint_folder_names_its_run_and_ids_need_no_gap(synthetic_run, capsys):
    step = sorted((synthetic_run / "checkpoints").iterdir())[-1]
    for folder in (synthetic_run / "checkpoints", step):
        assert main(["generate", str(folder), "--prompt-ids", "3"]) == 2
        err = capsys.readouterr().err
        assert f"{folder} is a checkpoint folder, not a run directory; give the run directory {synthetic_run}" in err
    assert parse_ids(["3,17,"], 64) == [[3, 17]]  # a trailing comma is harmless
    with pytest.raises(UserError, match=r"--prompt-ids '3,,17': give integers separated by commas"):
        parse_ids(["3,,17"], 64)  # a missing id was dropped silently
