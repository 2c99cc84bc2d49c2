"""The TFDS builder: array_record output, a disjoint deterministic split, bad corpora, interruptions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from scalelab.data.builder import REPORT_FILE, prepare_dataset
from scalelab.data.cleaning import Cleaner
from scalelab.data.reader import TextSplit, require_dataset
from scalelab.data.storage import DataError, dataset_version_dir
from tests.data.conftest import make_cfg, make_documents, write_jsonl

REPO = Path(__file__).resolve().parents[2]  # the repo root: tests/data/<file>


def split_texts(version_dir: Path) -> dict[str, list[str]]:
    return {split: list(TextSplit(version_dir, split).texts()) for split in ("train", "validation")}


def test_prepared_splits_are_disjoint_and_complete(prepared, tiny_corpus):
    cfg, _ = prepared
    version_dir = require_dataset(cfg.data)
    texts = split_texts(version_dir)
    assert texts["validation"] and texts["train"]
    assert not set(texts["train"]) & set(texts["validation"])
    assert sorted(texts["train"] + texts["validation"]) == sorted(make_documents(160))
    info = json.loads((version_dir / "dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record"
    report = json.loads((version_dir / REPORT_FILE).read_text())["report"]
    assert report["kept"] == {split: len(t) for split, t in texts.items()}
    assert not list(version_dir.parent.parent.glob(".staging-*")), "no staging folders after a clean prepare"


def test_split_is_deterministic_and_rebuild_needs_force(prepared, tmp_path):
    cfg, _ = prepared
    original = split_texts(require_dataset(cfg.data))
    copy = make_cfg(tmp_path, corpus=cfg.data.corpus)
    first = prepare_dataset(copy.data, progress=False)
    assert first.built
    assert {s: sorted(t) for s, t in split_texts(first.version_dir).items()} == {
        s: sorted(t) for s, t in original.items()
    }
    again = prepare_dataset(copy.data, progress=False)
    assert not again.built and again.report == first.report
    forced = prepare_dataset(copy.data, force=True, progress=False)
    assert forced.built and forced.version_dir == first.version_dir


def test_prepare_leaves_nothing_in_the_system_temp_dir(prepared, tmp_path, monkeypatch):
    cfg, _ = prepared
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    assert prepare_dataset(make_cfg(tmp_path / "data", corpus=cfg.data.corpus).data, progress=False).built
    assert list(system_tmp.iterdir()) == []


def test_changed_settings_need_force(prepared, tmp_path):
    cfg, _ = prepared
    stricter = make_cfg(require_dataset(cfg.data).parent.parent, corpus=cfg.data.corpus, min_chars=500)
    with pytest.raises(DataError, match=r"prepared differently \(data.min_chars 16 -> 500\); add --force"):
        prepare_dataset(stricter.data, progress=False)
    other = write_jsonl(tmp_path / "other.jsonl", make_documents(3))
    elsewhere = make_cfg(stricter.data.data_dir, corpus=str(other))
    with pytest.raises(DataError, match=rf"inputs \['{cfg.data.corpus}'\] -> \['{other}'\], input files 11 -> 1 "):
        prepare_dataset(elsewhere.data, progress=False)


def copy_corpus(tiny_corpus: Path, dest: Path) -> Path:
    """A copy of the corpus with new modification times, as `cp -r` makes."""
    return shutil.copytree(tiny_corpus, dest, copy_function=shutil.copy)


def test_added_file_is_refused_until_forced(tmp_path, tiny_corpus):
    corpus = copy_corpus(tiny_corpus, tmp_path / "corpus")
    cfg = make_cfg(tmp_path / "data", corpus=str(corpus))
    first = prepare_dataset(cfg.data, progress=False)
    assert not prepare_dataset(cfg.data, progress=False).built  # unchanged inputs: already prepared
    (corpus / "texts" / "extra.txt").write_text(make_documents(1, seed=1)[0])
    added = r"prepared differently \(input files 11 -> 12 \(1 added: texts/extra.txt\)\); add --force to rebuild it"
    with pytest.raises(DataError, match=added):
        prepare_dataset(cfg.data, progress=False)
    forced = prepare_dataset(cfg.data, force=True, progress=False)
    assert forced.built and forced.report["documents"] == first.report["documents"] + 1
    assert json.loads((forced.version_dir / REPORT_FILE).read_text())["files"] == 12
    assert not prepare_dataset(cfg.data, progress=False).built


def test_inputs_and_datasets_moved_together_are_the_same_dataset(tmp_path, tiny_corpus):
    before = make_cfg(tmp_path / "a" / "data", corpus=str(copy_corpus(tiny_corpus, tmp_path / "a" / "corpus")))
    built = prepare_dataset(before.data, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy)
    shutil.rmtree(tmp_path / "a")
    after = make_cfg(tmp_path / "b" / "data", corpus=str(tmp_path / "b" / "corpus"))
    again = prepare_dataset(after.data, progress=False)
    assert not again.built and not again.legacy and again.report == built.report


def drop_fingerprint(version_dir: Path) -> None:
    """Make the dataset's record look like one written before input fingerprints."""
    record = json.loads((version_dir / REPORT_FILE).read_text())
    del record["input_files"]
    (version_dir / REPORT_FILE).write_text(json.dumps(record))


def test_records_from_before_fingerprints_compare_paths_and_file_counts(tmp_path, tiny_corpus):
    corpus = copy_corpus(tiny_corpus, tmp_path / "corpus")
    cfg = make_cfg(tmp_path / "data", corpus=str(corpus))
    drop_fingerprint(prepare_dataset(cfg.data, progress=False).version_dir)
    kept = prepare_dataset(cfg.data, progress=False)
    assert not kept.built and kept.legacy
    moved = copy_corpus(corpus, tmp_path / "moved")
    with pytest.raises(DataError, match=r"-> \['.*moved'\] \(an older scalelab recorded only their paths\)"):
        prepare_dataset(make_cfg(tmp_path / "data", corpus=str(moved)).data, progress=False)
    (corpus / "extra.txt").write_text(make_documents(1, seed=1)[0])
    with pytest.raises(DataError, match=r"prepared differently \(input files 11 -> 12\); add --force"):
        prepare_dataset(cfg.data, progress=False)
    assert not prepare_dataset(cfg.data, force=True, progress=False).legacy


def failing_documents(limit: int):
    """A Cleaner.documents that dies in the validation pass, after the train split is written."""
    original = Cleaner.documents

    def documents(self, files, split):
        for n, item in enumerate(original(self, files, split)):
            if split == "validation" and n == limit:
                raise RuntimeError("injected failure mid-prepare")
            yield item

    return documents


def test_interrupted_prepare_leaves_no_dataset(tmp_path, tiny_corpus, monkeypatch):
    cfg = make_cfg(tmp_path, corpus=str(tiny_corpus))
    monkeypatch.setattr(Cleaner, "documents", failing_documents(limit=3))
    with pytest.raises(RuntimeError, match="injected"):
        prepare_dataset(cfg.data, progress=False)
    assert dataset_version_dir(tmp_path, "tiny_text") is None
    assert not list(tmp_path.glob(".staging-*")), "the failed build removes its staging folder"
    with pytest.raises(DataError, match=r"not prepared .* prepare it with: scalelab data prepare --set data.name=tiny"):
        require_dataset(cfg.data)
    monkeypatch.undo()
    assert prepare_dataset(cfg.data, progress=False).built


def test_interrupted_rebuild_keeps_the_old_dataset(tmp_path, tiny_corpus, monkeypatch):
    cfg = make_cfg(tmp_path, corpus=str(tiny_corpus))
    before = split_texts(prepare_dataset(cfg.data, progress=False).version_dir)
    monkeypatch.setattr(Cleaner, "documents", failing_documents(limit=1))
    with pytest.raises(RuntimeError, match="injected"):
        prepare_dataset(cfg.data, force=True, progress=False)
    assert split_texts(require_dataset(cfg.data)) == before
    assert not list(tmp_path.glob(".staging-*")), "the failed rebuild removes its staging folder"


KILLED_PREPARE = """
import sys, time
from pathlib import Path
from tests.data.conftest import make_cfg
from scalelab.data.builder import prepare_dataset
from scalelab.data.cleaning import Cleaner

original = Cleaner.documents
def documents(self, files, split):
    for n, item in enumerate(original(self, files, split)):
        if split == "validation" and n == 2:
            Path(sys.argv[3]).write_text("mid-prepare")  # tell the test, then wait to be killed
            time.sleep(600)
        yield item
Cleaner.documents = documents
prepare_dataset(make_cfg(Path(sys.argv[1]), corpus=sys.argv[2]).data, progress=False)
"""


def test_killed_prepare_leaves_no_dataset(tmp_path, tiny_corpus):
    data_dir, signal_file = tmp_path / "data", tmp_path / "signal"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_PREPARE, str(data_dir), str(tiny_corpus), str(signal_file)],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    try:
        deadline = time.monotonic() + 120
        while not signal_file.exists():
            assert process.poll() is None, "the prepare exited before it was killed"
            assert time.monotonic() < deadline, "the prepare never reached the validation split"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    staged = list(data_dir.glob(".staging-tiny_text-*"))
    assert staged and list(staged[0].rglob("*train.array_record*")), "the kill came after train was written"
    assert dataset_version_dir(data_dir, "tiny_text") is None
    with pytest.raises(DataError, match="scalelab data prepare"):
        require_dataset(make_cfg(data_dir).data)
    assert prepare_dataset(make_cfg(data_dir, corpus=str(tiny_corpus)).data, progress=False).built
    assert not list(data_dir.glob(".staging-*")), "a kill runs no cleanup, so the next prepare removes the leftovers"


def test_empty_corpus(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n\n   \n")
    with pytest.raises(DataError, match=r"is empty: its 1 files hold no documents"):
        prepare_dataset(make_cfg(tmp_path / "data", corpus=str(tmp_path / "blank.jsonl")).data, progress=False)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("  \n")
    (tmp_path / "texts" / "b.txt").write_text("short")
    with pytest.raises(DataError, match=r"every training document was dropped \(1 empty, 1 too_short\)"):
        prepare_dataset(make_cfg(tmp_path / "data", corpus=str(tmp_path / "texts")).data, progress=False)
    assert dataset_version_dir(tmp_path / "data", "tiny_text") is None


def test_blank_txt_files_are_an_empty_corpus(tmp_path):
    # Each .txt file is a document, dropped as empty; the fix is text, not data.min_chars.
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n")
    (tmp_path / "blank" / "b.txt").write_text("")
    with pytest.raises(DataError, match=r"is empty: its 2 files hold no documents; add text to it"):
        prepare_dataset(make_cfg(tmp_path / "data", corpus=str(tmp_path / "blank")).data, progress=False)


def test_missing_corpus_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset(make_cfg(tmp_path, corpus=str(tmp_path / "nowhere")).data, progress=False)


def test_no_validation_documents(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(5))
    cfg = make_cfg(tmp_path / "data", corpus=str(corpus), validation_fraction=1e-9)
    with pytest.raises(DataError, match=r"no document fell into validation .*raise data\.validation_fraction"):
        prepare_dataset(cfg.data, progress=False)


def test_local_dataset_name_takes_no_config(tmp_path, tiny_corpus):
    cfg = make_cfg(tmp_path, corpus=str(tiny_corpus), name="tiny_text/en")
    with pytest.raises(DataError, match="takes no /config part"):
        prepare_dataset(cfg.data, progress=False)


def test_tfrecord_dataset_needs_the_tf_extra(prepared, tmp_path, monkeypatch):
    cfg, _ = prepared
    source = require_dataset(cfg.data)
    copy = tmp_path / "tiny_text" / source.name
    shutil.copytree(source, copy)
    info = json.loads((copy / "dataset_info.json").read_text())
    info["fileFormat"] = "tfrecord"
    (copy / "dataset_info.json").write_text(json.dumps(info))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if TensorFlow were not installed
    with pytest.raises(DataError, match=r"stored as tfrecord.*install the tf extra \(pip install -e '\.\[tf\]'\)"):
        TextSplit(copy, "train")
