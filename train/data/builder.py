"""A tensorflow-datasets builder for local text corpora, written as array_record (no TensorFlow).

`prepare_dataset` cleans the corpus, splits it into train and validation by content hash,
writes it with TFDS into a staging folder and renames that into `<data_dir>/<name>/` only
when everything, the cleaning report included, is on disk.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds
from tqdm import tqdm

from train.data.cleaning import SPLITS, Cleaner, CleaningReport, CleaningRules
from train.data.corpus import ensure_default_corpus
from train.data.documents import find_files
from train.data.storage import DataError, dataset_version_dir, publish_dir, resolve_data_dir

REPORT_FILE = "scalelab_prepare.json"


class LocalText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Documents from local .txt/.jsonl files, cleaned, deduplicated and split by content hash."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Cleaned documents; train and validation split by content hash."}  # noqa: RUF012

    def __init__(self, *, files: list[Path], rules: CleaningRules, progress: bool = True, **kwargs):
        self.files = files
        self.rules = rules
        self.progress = progress
        self.report = CleaningReport()
        super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # A builder outside a registered package must build its DatasetInfo itself (see STACK.md).
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local text documents cleaned by scalelab (one document per .txt file or .jsonl line).",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, str]]]:
        documents = Cleaner(self.rules, self.report).documents(self.files, split)
        for key, text in tqdm(documents, desc=f"{self.name} {split}", unit=" docs", disable=not self.progress):
            yield key, {"text": text}


def builder_class(name: str) -> type[LocalText]:
    """A LocalText subclass whose TFDS name is `name` (TFDS names datasets after builder classes)."""
    if "/" in name:
        raise DataError(f"data.name={name!r}: a local dataset's name takes no /config part; use e.g. my_corpus")
    class_name = "".join(part.title() for part in name.split("_"))
    return type(class_name, (LocalText,), {"name": name, "__module__": __name__}, skip_registration=True)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared dataset: its version folder, its cleaning report, and whether this call built it."""

    version_dir: Path
    report: dict
    built: bool


def read_report(version_dir: Path) -> dict:
    """The cleaning report stored with a dataset prepared by scalelab ({} for other datasets)."""
    path = version_dir / REPORT_FILE
    return json.loads(path.read_text())["report"] if path.is_file() else {}


def corpus_files(corpus: list[str] | None) -> tuple[list[Path], list[str]]:
    """The input files and a description of the inputs; None means the default corpus (fetched if missing)."""
    specs = corpus if corpus else [str(ensure_default_corpus())]
    files = sorted({file for spec in specs for file in find_files(spec)})
    return files, specs


def prepare_dataset(data, corpus: list[str] | None = None, force: bool = False, progress: bool = True) -> Prepared:
    """Clean `corpus` (default: `data.corpus`, else the default corpus) into dataset `data.name`."""
    data_dir = resolve_data_dir(data.data_dir)
    existing = dataset_version_dir(data_dir, data.name)
    if existing is not None and not force:
        return Prepared(existing, read_report(existing), built=False)
    cls = builder_class(data.name)
    files, specs = corpus_files(corpus or ([data.corpus] if data.corpus else None))
    rules = CleaningRules.from_config(data)
    with publish_dir(data_dir / data.name) as staging:
        builder = cls(files=files, rules=rules, progress=progress, data_dir=str(staging / "tfds"))
        tfds.disable_progress_bar()  # our own bars count documents; TFDS's nest badly around them
        builder.download_and_prepare()
        _check_splits(builder.report, specs, len(files), rules)
        version = staging / str(cls.VERSION)
        (staging / "tfds" / data.name / str(cls.VERSION)).rename(version)
        shutil.rmtree(staging / "tfds")
        record = {"inputs": specs, "files": len(files), "rules": dataclasses.asdict(rules)}
        (version / REPORT_FILE).write_text(json.dumps({**record, "report": builder.report.to_dict()}, indent=2))
    return Prepared(data_dir / data.name / str(cls.VERSION), builder.report.to_dict(), built=True)


def _check_splits(report: CleaningReport, specs: list[str], n_files: int, rules: CleaningRules) -> None:
    """Refuse to publish a dataset with an empty split, saying why it is empty."""
    where = ", ".join(specs)
    if report.documents == 0:
        raise DataError(f"corpus {where} is empty: its {n_files} files hold no documents; add text to it")
    if report.kept["train"] == 0:
        dropped = ", ".join(f"{n} {reason}" for reason, n in report.dropped.items() if n)
        raise DataError(
            f"corpus {where}: every training document was dropped ({dropped}); "
            "relax data.min_chars / data.max_chars or fix the files"
        )
    if report.kept["validation"] == 0:
        raise DataError(
            f"corpus {where}: no document fell into validation ({report.kept['train']} kept, "
            f"data.validation_fraction={rules.validation_fraction}); add documents or raise data.validation_fraction"
        )
