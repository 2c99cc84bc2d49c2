"""A tensorflow-datasets builder for local text corpora, written as array_record (no TensorFlow).

`prepare_dataset` cleans the corpus, splits it into train and validation by content hash,
writes it with TFDS into a staging folder and renames that into `<data_dir>/<name>/` only
when everything, the cleaning report included, is on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds

from scalelab.data.cleaning import SPLITS, Cleaner, CleaningReport, CleaningRules
from scalelab.data.corpus import default_corpus_dir, ensure_default_corpus
from scalelab.data.documents import find_files, read_raw
from scalelab.data.inputs import describe_changes, fingerprint, name_files
from scalelab.data.storage import DataError, dataset_version_dir, publish_dir, resolve_data_dir
from scalelab.runtime.progress import progress_bar

REPORT_FILE = "scalelab_prepare.json"


class _LocalInfo(tfds.core.DatasetInfo):
    """A DatasetInfo with no GCS bucket to look in.

    TFDS asks the bucket for metadata of every dataset it has not prepared yet; with GCS off (it is)
    the lookup finds nothing but first leaves an empty folder in the system temp dir each time.
    """

    def initialize_from_bucket(self) -> None:
        pass


class LocalText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Documents from local .txt/.jsonl files, cleaned, deduplicated and split by content hash."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Cleaned documents; train and validation split by content hash."}  # noqa: RUF012

    def __init__(self, *, files: list[Path], rules: CleaningRules, corpus: str, progress: bool = True, **kwargs):
        self.files = files
        self.corpus = corpus
        self.rules = rules
        self.progress = progress
        self.report = CleaningReport()
        super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # A builder outside a registered package must build its DatasetInfo itself (see STACK.md).
        return _LocalInfo(
            builder=self,
            description="Local text documents cleaned by scalelab (one document per .txt file or .jsonl line).",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    # TFDS prints where it writes; that is our staging folder, which would only mislead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, str]]]:
        documents = Cleaner(self.rules, self.report).documents(self.files, split)
        for key, text in progress_bar(
            iterable=documents, desc=f"{self.name} {split}", unit=" docs", disable=not self.progress
        ):
            yield key, {"text": text}
        if self.report.kept[split] == 0:
            # Say why here: TFDS would only assert that the split got no examples.
            raise self._empty_split_error(split)

    def _empty_split_error(self, split: str) -> DataError:
        """Why `split` ended up with no documents, and what to change."""
        where = f"corpus {self.corpus}"
        # Blank .txt files are documents (dropped as empty), but no data.min_chars lets them through.
        if all(not raw.data.strip() for raw in read_raw(self.files)):
            return DataError(f"{where} is empty: its {len(self.files)} files hold no documents; add text to it")
        fraction = f"data.validation_fraction={self.rules.validation_fraction}"
        if split == "validation":
            return DataError(
                f"{where}: no document fell into validation ({self.report.kept['train']} kept for train, "
                f"{fraction}); add documents or raise data.validation_fraction"
            )
        dropped = ", ".join(f"{n} {reason}" for reason, n in self.report.dropped.items() if n)
        if dropped:
            return DataError(
                f"{where}: every training document was dropped ({dropped}); "
                "relax data.min_chars / data.max_chars or fix the files"
            )
        return DataError(f"{where}: no document fell into train ({fraction}); lower data.validation_fraction")


def builder_class(name: str) -> type[LocalText]:
    """A LocalText subclass whose TFDS name is `name` (TFDS names datasets after builder classes)."""
    if "/" in name:
        raise DataError(f"data.name={name!r}: a local dataset's name takes no /config part; use e.g. my_corpus")
    class_name = "".join(part.title() for part in name.split("_"))
    return type(class_name, (LocalText,), {"name": name, "__module__": __name__}, skip_registration=True)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared dataset: its version folder, its cleaning report, and whether this call built it.

    `legacy`: its record predates input fingerprints, so only its inputs' paths and file count
    were compared, and an edit inside an input file goes unnoticed.
    """

    version_dir: Path
    report: dict
    built: bool
    legacy: bool = False


def read_record(version_dir: Path) -> dict:
    """What a scalelab prepare stored with a dataset: inputs, rules and report ({} for other datasets)."""
    path = version_dir / REPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def requested_inputs(data, corpus: list[str] | None) -> list[str]:
    """The absolute input specs a prepare reads: `corpus`, else `data.corpus`, else the default corpus."""
    specs = corpus or ([data.corpus] if data.corpus else [str(default_corpus_dir())])
    return [os.path.abspath(os.path.expanduser(spec)) for spec in specs]


def _is_default_corpus(spec: str) -> bool:
    """Whether `spec` is the default corpus's folder in some cache (an old record names an old cache)."""
    return Path(spec).parts[-2:] == default_corpus_dir().parts[-2:]


def _same_place(recorded: list[str], inputs: list[str]) -> bool:
    """Whether the inputs are where a prepare read them, counting the default corpus in any cache as one place."""
    return recorded == inputs or all(_is_default_corpus(spec) for spec in [*recorded, *inputs])


def _legacy_input_changes(record: dict, inputs: list[str], n_files: int) -> list[str]:
    """What a record from before input fingerprints can tell apart: the file count and the inputs' paths."""
    if record.get("files", n_files) != n_files:
        return [f"input files {record['files']} -> {n_files}"]
    recorded = record.get("inputs", inputs)
    if _same_place(recorded, inputs):
        return []
    return [f"inputs {recorded} -> {inputs} (an older scalelab recorded only their paths)"]


def _input_changes(record: dict, inputs: list[str], named: dict[str, Path]) -> list[str]:
    """How the requested input files differ from the ones a stored prepare read, wherever either lives."""
    if "input_files" not in record:
        return _legacy_input_changes(record, inputs, len(named))
    change = describe_changes(record["input_files"], named)
    if change is None:
        return []
    moved = [] if _same_place(record["inputs"], inputs) else [f"inputs {record['inputs']} -> {inputs}"]
    return [*moved, change]


def _rule_changes(record: dict, rules: CleaningRules) -> list[str]:
    """The cleaning settings a stored prepare used that differ from `rules`."""
    stored = record.get("rules", {})
    return [
        f"data.{key} {stored[key]!r} -> {value!r}"
        for key, value in dataclasses.asdict(rules).items()
        if key in stored and stored[key] != value
    ]


def _reuse(existing: Path, name: str, inputs: list[str], named: dict[str, Path], rules: CleaningRules) -> Prepared:
    """The stored dataset, if it was prepared from the same input files with the same rules."""
    record = read_record(existing)
    changes = _input_changes(record, inputs, named) + _rule_changes(record, rules)
    if changes:
        raise DataError(
            f"dataset {name!r} in {existing} was prepared differently ({', '.join(changes)}); "
            "add --force to rebuild it, or set data.name to prepare it under another name"
        )
    legacy = bool(record) and "input_files" not in record
    return Prepared(existing, record.get("report", {}), built=False, legacy=legacy)


def prepare_dataset(data, corpus: list[str] | None = None, force: bool = False, progress: bool = True) -> Prepared:
    """Clean `corpus` (default: `data.corpus`, else the default corpus) into dataset `data.name`."""
    data_dir = resolve_data_dir(data.data_dir)
    inputs = requested_inputs(data, corpus)
    rules = CleaningRules.from_config(data)
    if inputs == [str(default_corpus_dir())]:
        ensure_default_corpus()
    files = sorted({file for spec in inputs for file in find_files(spec)})
    named = name_files(inputs, files)
    existing = dataset_version_dir(data_dir, data.name)
    if existing is not None and not force:
        return _reuse(existing, data.name, inputs, named, rules)
    input_files = fingerprint(named)  # before the build reads them: a file edited meanwhile then shows as changed
    cls = builder_class(data.name)
    with publish_dir(data_dir / data.name) as staging:
        builder = cls(
            files=files, rules=rules, corpus=", ".join(inputs), progress=progress, data_dir=str(staging / "tfds")
        )
        tfds.disable_progress_bar()  # our own bars count documents; TFDS's nest badly around them
        builder.download_and_prepare()
        version = staging / str(cls.VERSION)
        (staging / "tfds" / data.name / str(cls.VERSION)).rename(version)
        shutil.rmtree(staging / "tfds")
        record = {
            "inputs": inputs,
            "files": len(files),
            "rules": dataclasses.asdict(rules),
            "report": builder.report.to_dict(),
            "input_files": input_files,
        }
        (version / REPORT_FILE).write_text(json.dumps(record, indent=2))
    return Prepared(data_dir / data.name / str(cls.VERSION), builder.report.to_dict(), built=True)
