"""Cleaning: Unicode normalisation, length filters, exact-duplicate removal and the hash split.

A document's split comes from the hash of its cleaned text, so exact duplicates always land in
the same split: each split's pass can remove duplicates on its own and the two passes together
still remove every duplicate, with no document in both splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from scalelab.data.documents import decode, read_raw
from scalelab.data.storage import DataError

SPLITS = ("train", "validation")
DROP_REASONS = ("non_utf8", "empty", "too_short", "too_long", "duplicate")
MAX_LOCATIONS = 20  # non-UTF-8 locations kept for the report; the count covers all of them


@dataclasses.dataclass(frozen=True)
class CleaningRules:
    """The `data.*` settings that decide which documents are kept and how they are normalised."""

    normalization: str = "NFC"
    min_chars: int = 16
    max_chars: int | None = None
    non_utf8: str = "fail"
    validation_fraction: float = 0.02
    text_field: str = "text"

    @classmethod
    def from_config(cls, data) -> CleaningRules:
        """The rules set by a DataConfig."""
        return cls(**{f.name: getattr(data, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class CleaningReport:
    """What a prepare kept and dropped, with counts per split and per reason."""

    kept: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    kept_chars: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    dropped: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    non_utf8_locations: list[str] = dataclasses.field(default_factory=list)

    @property
    def documents(self) -> int:
        """Documents read: kept plus dropped."""
        return sum(self.kept.values()) + sum(self.dropped.values())

    def to_dict(self) -> dict:
        """The report as JSON-ready data."""
        return {"documents": self.documents, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> CleaningReport:
        """A report read back from `to_dict` output."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def lines(self) -> list[str]:
        """A human-readable summary, one fact per line."""
        out = [f"read {self.documents} documents"]
        for split in SPLITS:
            out.append(f"kept {self.kept[split]:>8} {split} documents ({self.kept_chars[split]:,} characters)")
        for reason in DROP_REASONS:
            out.append(f"dropped {self.dropped[reason]:>5} {reason}")
        out += [f"  not UTF-8: {where}" for where in self.non_utf8_locations]
        hidden = self.dropped["non_utf8"] - len(self.non_utf8_locations)
        if hidden > 0:
            out.append(f"  ... and {hidden} more non-UTF-8 documents")
        return out


def normalize(text: str, form: str) -> str:
    """Apply Unicode normalisation `form` (NFC, NFKC or none)."""
    return text if form == "none" else unicodedata.normalize(form, text)


def content_key(data: bytes) -> bytes:
    """A 128-bit content hash: the duplicate key and the source of the split."""
    return hashlib.blake2b(data, digest_size=16).digest()


def split_of(key: bytes, validation_fraction: float) -> str:
    """The split a document with content hash `key` belongs to."""
    unit = int.from_bytes(key[:8], "big") / 2.0**64
    return "validation" if unit < validation_fraction else "train"


class Cleaner:
    """Streams the clean documents of one split and adds what it sees to a shared report."""

    def __init__(self, rules: CleaningRules, report: CleaningReport):
        self.rules = rules
        self.report = report

    def _drop_reason(self, text: str, key: bytes, seen: set[bytes]) -> str | None:
        if not text.strip():
            return "empty"
        if len(text) < self.rules.min_chars:
            return "too_short"
        if self.rules.max_chars is not None and len(text) > self.rules.max_chars:
            return "too_long"
        if key in seen:
            return "duplicate"
        return None

    def documents(self, files: list[Path], split: str) -> Iterator[tuple[str, str]]:
        """(hex content hash, cleaned text) for each kept document of `split`."""
        rules = self.rules
        seen: set[bytes] = set()
        for raw in read_raw(files):
            doc = decode(raw, rules.text_field)
            if doc.text is None:
                where = f"{raw.path}: byte offset {doc.bad_offset}"
                if rules.non_utf8 == "fail":
                    raise DataError(
                        f"{where}: not valid UTF-8; re-encode or remove the file, "
                        "or set data.non_utf8=skip to drop such documents and report them"
                    )
                # Unreadable text has no cleaned hash; its raw bytes pick the split that counts it.
                if split_of(content_key(raw.data), rules.validation_fraction) == split:
                    self.report.dropped["non_utf8"] += 1
                    if len(self.report.non_utf8_locations) < MAX_LOCATIONS:
                        self.report.non_utf8_locations.append(where)
                continue
            text = normalize(doc.text, rules.normalization)
            key = content_key(text.encode("utf-8"))
            if split_of(key, rules.validation_fraction) != split:
                continue
            reason = self._drop_reason(text, key, seen)
            if reason is not None:
                self.report.dropped[reason] += 1
                continue
            seen.add(key)
            self.report.kept[split] += 1
            self.report.kept_chars[split] += len(text)
            yield key.hex(), text
