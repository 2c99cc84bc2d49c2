"""Input fingerprints: files named relative to their inputs, compared by content, hashed only when touched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from scalelab.data import inputs
from scalelab.data.documents import find_files
from scalelab.data.inputs import describe_changes, fingerprint, name_files


def named(*specs: Path) -> dict[str, Path]:
    """The prepare's view of `specs`: their files by relative name."""
    files = sorted({file for spec in specs for file in find_files(str(spec))})
    return name_files([str(spec) for spec in specs], files)


@pytest.fixture
def texts(tmp_path) -> Path:
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "c.txt", "sub/d.jsonl"):
        (root / name).write_text(f"contents of {name}\n")
    return root


def test_names_are_relative_to_the_inputs(texts, tmp_path):
    assert list(named(texts)) == ["a.txt", "b.txt", "c.txt", "sub/d.jsonl"]
    assert list(named(texts / "a.txt")) == ["a.txt"]
    assert list(named(Path(f"{texts}/*.txt"))) == ["a.txt", "b.txt", "c.txt"]
    assert list(named(Path(f"{texts}/**/*.jsonl"))) == ["sub/d.jsonl"]
    assert list(named(texts / "a.txt", texts / "sub")) == ["a.txt", "sub/d.jsonl"]


def test_a_copy_elsewhere_matches_and_changes_are_named(texts, tmp_path):
    recorded = fingerprint(named(texts))
    copy = shutil.copytree(texts, tmp_path / "elsewhere", copy_function=shutil.copy)  # new mtimes, same bytes
    os.utime(copy / "a.txt", ns=(1, 1))
    assert describe_changes(recorded, named(copy)) is None
    for i in range(5):
        (copy / f"new{i}.txt").write_text("more\n")
    (copy / "b.txt").unlink()
    (copy / "c.txt").write_text("contents of C.txt\n")  # same size: only the hash tells
    assert describe_changes(recorded, named(copy)) == (
        "input files 4 -> 8 (5 added: new0.txt, new1.txt, new2.txt and 2 more; 1 removed: b.txt; 1 changed: c.txt)"
    )


def test_files_in_place_are_not_read_again(texts, monkeypatch):
    recorded = fingerprint(named(texts))
    monkeypatch.setattr(inputs, "file_sha256", lambda path: pytest.fail(f"hashed {path}"))
    assert describe_changes(recorded, named(texts)) is None
    (texts / "a.txt").write_text("longer contents of a.txt\n")
    assert describe_changes(recorded, named(texts)) == "input files 4 -> 4 (1 changed: a.txt)"
