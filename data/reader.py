"""Reading the text of a prepared TFDS dataset, ours or a catalog one (lm1b, c4/en, ...).

array_record datasets are read through TFDS's random-access data source and need no
TensorFlow; tfrecord datasets can only be read through tf.data, so they need the `tf` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from scalelab.data.storage import DEFAULT_NAME, DataError, dataset_version_dir, prepare_command, resolve_data_dir

EVAL_SPLITS = ("validation", "test")  # the held-out split, by preference (lm1b has only test)
READ_CHUNK = 256  # records fetched per data-source call


def require_dataset(data) -> Path:
    """The version folder of the dataset a DataConfig names, or a DataError saying how to prepare it."""
    data_dir = resolve_data_dir(data.data_dir)
    version_dir = dataset_version_dir(data_dir, data.name)
    if version_dir is not None:
        return version_dir
    message = f"dataset {data.name!r} is not prepared in {data_dir}; prepare it with: {prepare_command(data)}"
    if data.name != DEFAULT_NAME and not data.corpus:
        message += (
            f" --set data.corpus=PATH (for local files), or, for a TFDS catalog dataset, build it in array_record "
            f"format into that folder (tfds build {data.name} --data_dir {data_dir} --file_format array_record) "
            "or point data.data_dir at a folder where it is built"
        )
    raise DataError(message)


class TextSplit:
    """The documents of one split of a prepared dataset, read in order."""

    def __init__(self, version_dir: Path, split: str, text_field: str = "text"):
        import tensorflow_datasets as tfds

        self.builder = tfds.builder_from_directory(str(version_dir))
        self.split = split
        self.text_field = text_field
        info = self.builder.info
        if split not in info.splits:
            raise DataError(f"{version_dir}: no split {split!r}; it has {', '.join(info.splits)}")
        if text_field not in info.features:
            raise DataError(
                f"{version_dir}: no feature {text_field!r}; it has {', '.join(info.features)}; set data.text_field"
            )
        self.num_documents = info.splits[split].num_examples
        self.array_record = info.file_format == tfds.core.FileFormat.ARRAY_RECORD
        if not self.array_record:
            _require_tensorflow(version_dir, info.file_format.value)

    def __len__(self) -> int:
        return self.num_documents

    def texts(self) -> Iterator[str]:
        """Each document's text, decoded from UTF-8."""
        return self._random_access() if self.array_record else self._tf_data()

    def _random_access(self) -> Iterator[str]:
        source = self.builder.as_data_source(split=self.split)
        for start in range(0, len(source), READ_CHUNK):
            for record in source.__getitems__(range(start, min(start + READ_CHUNK, len(source)))):
                yield _as_text(record[self.text_field])

    def _tf_data(self) -> Iterator[str]:
        import tensorflow_datasets as tfds

        dataset = self.builder.as_dataset(split=self.split, shuffle_files=False)
        for record in tfds.as_numpy(dataset):
            yield _as_text(record[self.text_field])


def eval_split(version_dir: Path) -> str:
    """The held-out split of a prepared dataset: validation, else test."""
    import tensorflow_datasets as tfds

    splits = tfds.builder_from_directory(str(version_dir)).info.splits
    for name in EVAL_SPLITS:
        if name in splits:
            return name
    raise DataError(f"{version_dir}: no held-out split (looked for {', '.join(EVAL_SPLITS)}); it has {list(splits)}")


def _as_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _require_tensorflow(version_dir: Path, file_format: str) -> None:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise DataError(
            f"{version_dir} is stored as {file_format}, which only TensorFlow can read; install the tf extra "
            "(pip install -e '.[tf]') or rebuild the dataset with --file_format array_record"
        ) from None
