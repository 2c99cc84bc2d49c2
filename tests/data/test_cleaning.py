"""Reading local files and cleaning them: normalisation, filters, duplicates, bad bytes, the split."""

from __future__ import annotations

import json

import pytest

from scalelab.data.cleaning import SPLITS, Cleaner, CleaningReport, CleaningRules, content_key, normalize, split_of
from scalelab.data.documents import find_files
from scalelab.data.storage import DataError
from tests.data.conftest import make_documents, write_jsonl


def clean_all(files, rules: CleaningRules) -> tuple[dict[str, list[str]], CleaningReport]:
    """Run both split passes, as the builder does; return the kept texts per split and the report."""
    report = CleaningReport()
    cleaner = Cleaner(rules, report)
    kept = {split: [text for _, text in cleaner.documents(files, split)] for split in SPLITS}
    return kept, report


def test_normalisation_forms():
    assert normalize("cafe\u0301", "NFC") == "caf\u00e9"
    assert normalize("\ufb01ne", "NFKC") == "fine"
    assert normalize("\ufb01ne", "NFC") == "\ufb01ne"
    assert normalize("cafe\u0301", "none") == "cafe\u0301"


def test_filters_duplicates_and_counts(tmp_path):
    docs = make_documents(40)
    extra = [
        "   \n\t ",  # empty
        "tiny",  # too short
        "x" * 5000,  # too long
        docs[3],  # exact duplicate
        docs[5].replace("caf\u00e9", "cafe\u0301"),  # a duplicate once NFC-normalised
    ]
    files = [write_jsonl(tmp_path / "a.jsonl", docs + extra)]
    rules = CleaningRules(min_chars=10, max_chars=4000, validation_fraction=0.25)
    kept, report = clean_all(files, rules)
    assert report.dropped == {"non_utf8": 0, "empty": 1, "too_short": 1, "too_long": 1, "duplicate": 2}
    assert sorted(kept["train"] + kept["validation"]) == sorted(docs)
    assert report.kept == {split: len(kept[split]) for split in SPLITS}
    assert report.kept_chars == {split: sum(map(len, kept[split])) for split in SPLITS}
    assert report.documents == len(docs) + len(extra)
    assert kept["validation"], "a quarter of 40 documents should give some validation documents"
    assert not set(kept["train"]) & set(kept["validation"])
    for split, texts in kept.items():
        assert all(split_of(content_key(t.encode()), 0.25) == split for t in texts)


def test_no_normalisation_keeps_distinct_forms(tmp_path):
    doc = make_documents(1)[0]
    files = [write_jsonl(tmp_path / "a.jsonl", [doc, doc.replace("caf\u00e9", "cafe\u0301")])]
    _, report = clean_all(files, CleaningRules(normalization="none"))
    assert report.dropped["duplicate"] == 0
    assert sum(report.kept.values()) == 2


def test_non_utf8_txt_is_reported_with_offset_and_skipped(tmp_path):
    good = make_documents(6)
    for i, doc in enumerate(good):
        (tmp_path / f"good{i}.txt").write_text(doc)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text up to here " + b"\xff\xfe broken" + b" and more words after it")
    files = find_files(str(tmp_path))
    kept, report = clean_all(files, CleaningRules(non_utf8="skip"))
    assert report.dropped["non_utf8"] == 1
    assert report.non_utf8_locations == [f"{bad}: byte offset 21"]
    assert sorted(kept["train"] + kept["validation"]) == sorted(good)


def test_non_utf8_fails_by_default_naming_file_and_offset(tmp_path):
    lines = [json.dumps({"text": d}).encode() + b"\n" for d in make_documents(3)]
    broken = b'{"text": "abc \xc3\x28 def"}\n'  # \xc3 must be followed by a continuation byte
    path = tmp_path / "c.jsonl"
    path.write_bytes(lines[0] + lines[1] + broken + lines[2])
    offset = len(lines[0]) + len(lines[1]) + broken.index(b"\xc3")
    with pytest.raises(DataError, match=rf"c\.jsonl: byte offset {offset}: not valid UTF-8.*data\.non_utf8=skip"):
        clean_all([path], CleaningRules())


def test_lone_surrogate_escape_is_not_utf8(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"text": make_documents(1)[0]}) + "\n" + '{"text": "bad \\ud800 text here ok"}\n')
    _, report = clean_all([path], CleaningRules(non_utf8="skip"))
    assert report.dropped["non_utf8"] == 1
    assert sum(report.kept.values()) == 1


def test_bad_json_names_file_line_and_offset(tmp_path):
    path = tmp_path / "j.jsonl"
    first = json.dumps({"text": "a fine first document"}) + "\n"
    path.write_text(first + "\n{not json}\n")  # a blank line still counts as a line
    with pytest.raises(DataError, match=rf"j\.jsonl: line 3 \(byte offset {len(first) + 1}\): not valid JSON"):
        clean_all([path], CleaningRules())
    path.write_text(json.dumps({"body": "text under another key", "id": 7}) + "\n")
    with pytest.raises(DataError) as error:
        clean_all([path], CleaningRules())
    assert str(error.value).endswith(
        "j.jsonl: line 1 (byte offset 0): expected a JSON string or an object with a string 'text' field, "
        "but the object has no 'text' (its fields: 'body', 'id'); set data.text_field=body, or fix the line"
    )
    kept, _ = clean_all([path], CleaningRules(text_field="body", validation_fraction=1e-9))
    assert kept["train"] == ["text under another key"]


@pytest.mark.parametrize(
    ("line", "got"),
    [
        ("42", "got a number; fix the line"),
        ("null", "got null; fix the line"),
        ('["a"]', "got an array; fix the line"),
        ('{"text": null}', "but 'text' is null; fix the line"),
        ('{"text": ["a", "b"]}', "but 'text' is an array; fix the line"),
        ("{}", "but the object has no 'text' (it is an empty object); set data.text_field to the field"),
    ],
)
def test_a_jsonl_line_without_text_says_what_it_holds(tmp_path, line, got):
    path = tmp_path / "k.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError) as error:
        clean_all([path], CleaningRules())
    assert "k.jsonl: line 1 (byte offset 0): expected a JSON string or an object with a string 'text' field" in str(
        error.value
    )
    assert got in str(error.value)


def test_find_files_errors_and_order(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_files(str(tmp_path / "missing"))
    (tmp_path / "notes.md").write_text("not a corpus file")
    with pytest.raises(DataError, match=r"no \.txt or \.jsonl files"):
        find_files(str(tmp_path))
    with pytest.raises(DataError, match="matches no files"):
        find_files(str(tmp_path / "*.txt"))
    for name in ("b/2.txt", "a.jsonl", "b/1.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_files(str(tmp_path))] == ["a.jsonl", "b/1.txt", "b/2.txt"]
    assert [p.name for p in find_files(str(tmp_path / "b" / "*.txt"))] == ["1.txt", "2.txt"]


def test_utf8_byte_order_mark_is_not_text(tmp_path):
    # Windows tools write UTF-8 with a leading BOM; it must neither break a .jsonl file's first
    # line nor become part of a .txt document (where it would also defeat exact deduplication).
    doc = make_documents(1)[0]
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": doc + "!"}).encode() + b"\n")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + doc.encode())
    (tmp_path / "plain.txt").write_text(doc)
    kept, report = clean_all(find_files(str(tmp_path)), CleaningRules())
    assert sorted(kept["train"] + kept["validation"]) == sorted([doc, doc + "!"])
    assert report.dropped["duplicate"] == 1
    # Offsets still count the mark's bytes, so a bad byte is reported where it is in the file.
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfab\xff")
    with pytest.raises(DataError, match=r"bom\.txt: byte offset 5: not valid UTF-8"):
        clean_all(find_files(str(tmp_path)), CleaningRules())


def test_a_max_chars_below_min_chars_says_how_to_fix_it():
    from scalelab.data.config import DataConfig
    from scalelab.model.config import ConfigError

    with pytest.raises(ConfigError) as error:
        DataConfig(min_chars=100, max_chars=10)
    assert str(error.value) == (
        "data.max_chars (10) is smaller than data.min_chars (100), so every document would be dropped; "
        "raise data.max_chars (null: no limit) or lower data.min_chars"
    )
