"""Raw documents from local files: each .txt file is one document, each .jsonl line is one.

Documents come out as bytes with their file and byte offset, so the cleaning step can report
exactly where a file stops being UTF-8.
"""

from __future__ import annotations

import dataclasses
import glob
import json
from collections.abc import Iterator
from pathlib import Path

from scalelab.data.storage import DataError

SUFFIXES = (".txt", ".jsonl")
# Windows editors and PowerShell start UTF-8 files with this byte-order mark. It marks the
# encoding, not text: kept, it would start a .txt document with an invisible U+FEFF (so the
# same text without it is no duplicate) and make a .jsonl file's first line invalid JSON.
UTF8_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True)
class RawDocument:
    """One document's bytes and where they came from (`offset` is the byte offset in `path`, `line`
    the 1-based line of a .jsonl document, which is what an editor shows)."""

    path: Path
    offset: int
    data: bytes
    line: int | None = None


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A document decoded to text, or the byte offset (in its file) of its first invalid UTF-8 byte."""

    raw: RawDocument
    text: str | None
    bad_offset: int | None = None


def find_files(spec: str) -> list[Path]:
    """The .txt and .jsonl files named by a file, a directory (searched recursively) or a glob, sorted."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
    elif glob.has_magic(spec):
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
        if not files:
            raise DataError(f"corpus {spec!r}: the pattern matches no files; check the path or set data.corpus")
    else:
        raise DataError(f"corpus {spec!r} does not exist; give an existing file, directory or glob (data.corpus)")
    chosen = sorted(p for p in files if p.suffix in SUFFIXES)
    if not chosen:
        raise DataError(
            f"corpus {spec!r} holds no .txt or .jsonl files (found {len(files)} other files); "
            "give plain-text (.txt) or JSON-lines (.jsonl) files, or a folder of them (as INPUT or data.corpus)"
        )
    return chosen


def read_raw(files: list[Path]) -> Iterator[RawDocument]:
    """Every document in `files`, in file order and then line order, without a leading UTF-8 byte-order mark."""
    for path in files:
        if path.suffix == ".txt":
            data = path.read_bytes()
            bom = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
            yield RawDocument(path, bom, data[bom:])
            continue
        offset = 0
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                start = len(UTF8_BOM) if offset == 0 and line.startswith(UTF8_BOM) else 0
                if line[start:].strip():
                    yield RawDocument(path, offset + start, line[start:], number)
                offset += len(line)


def _not_text(record: object, text_field: str) -> str:
    """Why a parsed .jsonl line holds no document, and the fix."""
    expected = f"expected a JSON string or an object with a string {text_field!r} field"
    if not isinstance(record, dict):
        return f"{expected}, got {_json_kind(record)}; fix the line"
    if text_field in record:
        return f"{expected}, but {text_field!r} is {_json_kind(record[text_field])}; fix the line"
    strings = [key for key, value in record.items() if isinstance(value, str)]
    found = f"its fields: {', '.join(map(repr, record))}" if record else "it is an empty object"
    hint = (
        f"set data.text_field={strings[0]}" if len(strings) == 1 else "set data.text_field to the field with the text"
    )
    return f"{expected}, but the object has no {text_field!r} ({found}); {hint}, or fix the line"


def _json_kind(value: object) -> str:
    """A JSON value's kind, as an error message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def decode(raw: RawDocument, text_field: str) -> Decoded:
    """Decode a document strictly as UTF-8 and, for a .jsonl line, take its `text_field`."""
    try:
        text = raw.data.decode("utf-8")
    except UnicodeDecodeError as error:
        return Decoded(raw, None, raw.offset + error.start)
    if raw.path.suffix != ".jsonl":
        return Decoded(raw, text)
    where = f"{raw.path}: line {raw.line} (byte offset {raw.offset})"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error.msg}); fix or remove that line") from None
    value = record.get(text_field) if isinstance(record, dict) else record
    if not isinstance(value, str):
        raise DataError(f"{where}: {_not_text(record, text_field)}")
    try:  # a \ud800-style escape decodes to a lone surrogate, which no UTF-8 text can hold
        value.encode("utf-8")
    except UnicodeEncodeError:
        return Decoded(raw, None, raw.offset)
    return Decoded(raw, value)
