"""Integrity manifests: the size and SHA-256 of every file of a checkpoint, checked before a restore.

Orbax's atomic rename makes a checkpoint appear only once it is fully written, but it cannot
tell a truncated or bit-flipped file from a good one later on (a full disk, a bad copy, a
flaky filesystem). The manifest is written inside the checkpoint just before orbax commits it,
so every committed checkpoint carries one; a missing or mismatching manifest marks it corrupt.
"""

from __future__ import annotations

import json
from pathlib import Path

from scalelab.files import file_sha256, write_atomic

MANIFEST = "scalelab_manifest.json"
# Orbax rewrites the step's own metadata (commit time, metrics) when it commits, after the manifest.
VOLATILE = frozenset({"_CHECKPOINT_METADATA"})


def _files(directory: Path) -> list[Path]:
    skip = {MANIFEST, *VOLATILE}
    return sorted(p for p in directory.rglob("*") if p.is_file() and str(p.relative_to(directory)) not in skip)


def write_manifest(directory: Path) -> None:
    """Record every file under `directory` (size and SHA-256) in its manifest, atomically."""
    entries = {
        str(path.relative_to(directory)): {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in _files(directory)
    }
    write_atomic(directory / MANIFEST, json.dumps({"files": entries}, indent=1, sort_keys=True))


def verify_manifest(directory: Path) -> str | None:
    """None if every file in the manifest is present and intact, else what is wrong (first problem)."""
    try:
        with open(directory / MANIFEST) as f:
            entries = json.load(f)["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (the save never finished)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable {MANIFEST} ({error})"
    if not entries:
        return f"{MANIFEST} lists no files"
    for name, expected in sorted(entries.items()):
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, the manifest says {expected['size']}"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256 checksum"
    return None
