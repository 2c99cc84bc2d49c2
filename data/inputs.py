"""What a prepared dataset was built from: its input files by relative name, size and content hash.

A dataset is identified by its inputs' contents, not by where they live, so a cache that moved
(`$SCALELAB_CACHE`) or a corpus copied elsewhere still matches, while a file added, removed or
edited does not. Hashing reads every byte (about 10 ms for the 8.9 MB default corpus, minutes
for a corpus of many GB), so a check hashes only the files whose modification time differs
from the record: an unchanged corpus in place costs one stat per file.
"""

from __future__ import annotations

import glob
import itertools
import os
from pathlib import Path

from scalelab.files import file_sha256

SHOWN = 3  # file names a change lists before it says "and N more"


def spec_root(spec: str) -> Path:
    """The folder an input spec's files are named relative to: a directory, a file's folder, a glob's fixed part."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    return Path(*itertools.takewhile(lambda part: not glob.has_magic(part), path.parts))


def name_files(specs: list[str], files: list[Path]) -> dict[str, Path]:
    """`files` by their path relative to the folder that holds all of `specs`, which moves with them."""
    root = os.path.commonpath([spec_root(spec) for spec in specs])
    return {file.relative_to(root).as_posix(): file for file in files}


def fingerprint(named: dict[str, Path]) -> dict[str, dict]:
    """Each file's size, modification time and SHA-256, by name: what a prepare records."""
    entries = {}
    for name, path in sorted(named.items()):
        stat = path.stat()
        entries[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}
    return entries


def _unchanged(entry: dict, path: Path) -> bool:
    """Whether `path` still holds what `entry` recorded; it is hashed only if its mtime moved."""
    stat = path.stat()
    if stat.st_size != entry["size"]:
        return False
    return stat.st_mtime_ns == entry["mtime_ns"] or file_sha256(path) == entry["sha256"]


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def describe_changes(recorded: dict[str, dict], named: dict[str, Path]) -> str | None:
    """How `named` differs from the recorded files, e.g. `input files 44 -> 85 (41 added: a.txt, ...)`, or None."""
    added = sorted(named.keys() - recorded.keys())
    removed = sorted(recorded.keys() - named.keys())
    changed = [name for name in sorted(named.keys() & recorded.keys()) if not _unchanged(recorded[name], named[name])]
    kinds = (("added", added), ("removed", removed), ("changed", changed))
    parts = [f"{len(names)} {kind}: {_listed(names)}" for kind, names in kinds if names]
    if not parts:
        return None
    return f"input files {len(recorded)} -> {len(named)} ({'; '.join(parts)})"
