"""Reading the YAML and JSON files that users write and runs leave behind, and writing files atomically.

A file that does not parse is a user-facing error (ConfigError) that names the file, where it
stops parsing and what to do, never a parser's traceback. A file scalelab writes for others to
read appears whole or not at all (write_atomic).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import yaml

from scalelab.errors import ConfigError


def parse_yaml(text: str, where: str) -> Any:
    """The YAML value of `text`; `where` names its source in the error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


def read_yaml(path: Path, fix: str) -> Any:
    """The YAML value of the file at `path`; a file that does not parse is a ConfigError ending in `fix`."""
    try:
        return parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); {fix}") from None
    except ConfigError as error:
        raise ConfigError(f"{error}; {fix}") from None


def read_json(path: Path, fix: str) -> Any:
    """The JSON value of the file at `path`; a truncated or garbled file is a ConfigError ending in `fix`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); {fix}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON at line {error.lineno}, column {error.colno}; {fix}") from None


def cache_dir() -> Path:
    """Root of scalelab's cache: $SCALELAB_CACHE, else $XDG_CACHE_HOME/scalelab, else ~/.cache/scalelab."""
    if os.environ.get("SCALELAB_CACHE"):
        return Path(os.environ["SCALELAB_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "scalelab"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks so a large corpus file never sits in memory whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace the file at `path` with `data` (text is UTF-8) so readers see the old file or the new one, never a mix.

    The data goes to a temporary file beside `path`, reaches the disk, and is then renamed over
    it; the directory is synced too, so the rename itself survives a crash. The file gets the
    permissions a plain `open(path, "w")` would give, 0o666 less the umask, so other users of a
    shared sweep or run directory can read it. If anything fails, `path` keeps its old content
    and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open applies the umask to 0o666 itself, as open() does; mkstemp would force 0o600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename) to disk, where the OS lets a directory be opened and synced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)
