"""Where data lives on disk, how it is published atomically, and the commands that create it.

A prepared dataset is `<data_dir>/<name>/<version>/` (the TFDS layout); the tokenizers trained on
it, with the token streams they encoded, live in its `tokenizers/` folder. Every folder is built
under a temporary name and renamed into place, so an interrupted command never leaves a
folder that reads as complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from scalelab.errors import ConfigError
from scalelab.files import cache_dir

DEFAULT_NAME = "scalelab_text"
DEFAULT_CONFIG = "gpt-tiny-text"  # the config `data prepare` and `tokenizer train` use without --config
STAGING_PREFIX = ".staging-"
TOKENIZER_META = "meta.json"


class DataError(ConfigError):
    """Bad or missing data: the message names the file or dataset and the command or key that fixes it."""


def default_data_dir() -> Path:
    """Where prepared datasets go when `data.data_dir` is unset: $SCALELAB_DATA_DIR or <cache>/datasets."""
    if os.environ.get("SCALELAB_DATA_DIR"):
        return Path(os.environ["SCALELAB_DATA_DIR"]).expanduser()
    return cache_dir() / "datasets"


def resolve_data_dir(data_dir: str | None) -> Path:
    """`data.data_dir` as a path, or the default."""
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def dataset_version_dir(data_dir: Path, name: str) -> Path | None:
    """The newest prepared version folder of dataset `name` (one holding dataset_info.json), or None."""
    root = data_dir / name
    if not root.is_dir():
        return None
    versions = [p for p in root.iterdir() if p.is_dir() and (p / "dataset_info.json").is_file()]
    versions = [p for p in versions if all(part.isdigit() for part in p.name.split("."))]
    if not versions:
        return None
    return max(versions, key=lambda p: tuple(int(part) for part in p.name.split(".")))


def tokenizer_dir(version_dir: Path, kind: str, vocab_size: int, sentinels: int) -> Path:
    """The folder of the `kind` tokenizer with `vocab_size` pieces and `sentinels` reserved sentinels.

    The sentinel count is part of the name, so a T5 tokenizer never displaces the sentinel-free
    one that GPT and BERT runs of the same vocabulary size read (and vice versa).
    """
    return version_dir / "tokenizers" / (f"{kind}-{vocab_size}" + (f"-s{sentinels}" if sentinels else ""))


def available_tokenizers(version_dir: Path) -> list[str]:
    """Names (`bpe-512`, `bpe-512-s100`, ...) of the complete tokenizers stored with a dataset."""
    root = version_dir / "tokenizers"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / TOKENIZER_META).is_file())


def _settings(data, keys: tuple[str, ...]) -> str:
    """`--set` flags for the data keys in `keys` whose values differ from the defaults."""
    from scalelab.data.config import DataConfig

    defaults = DataConfig()
    flags = []
    for key in keys:
        value = getattr(data, key)
        if value != getattr(defaults, key):
            flags.append(f" --set data.{key}={value}")
    return "".join(flags)


def prepare_command(data) -> str:
    """The command that prepares the dataset a DataConfig reads."""
    return "scalelab data prepare" + _settings(data, ("name", "data_dir", "corpus"))


def tokenizer_command(data, vocab_size: int) -> str:
    """The command that trains the tokenizer a DataConfig needs with `vocab_size` pieces."""
    return (
        "scalelab tokenizer train"
        + _settings(data, ("name", "data_dir", "tokenizer", "sentinels"))
        + f" --set model.vocab_size={vocab_size}"
    )


def _remove_stale(parent: Path, prefix: str) -> None:
    """Delete leftovers of interrupted builds of the same target."""
    for stale in parent.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def publish_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success rename it to `final`, replacing any old one.

    The staging folder is a sibling of `final`, so the rename stays on one file system and is
    atomic. On an exception (Ctrl-C included) `final` is untouched and the staging folder is
    deleted; after a kill, which runs no cleanup, the next build of the same target deletes it.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{STAGING_PREFIX}{final.name}-"
    _remove_stale(final.parent, prefix)
    staging = final.parent / f"{prefix}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        # Move the old folder aside first: rename cannot replace a non-empty directory.
        trash = final.parent / f"{prefix}old-{uuid.uuid4().hex[:8]}"
        final.rename(trash)
        staging.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(final)
