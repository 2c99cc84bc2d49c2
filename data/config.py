"""The `data:` and `objective:` config sections: where batches come from and what the model learns from them."""

from __future__ import annotations

import dataclasses
import re

from scalelab.data.special import DEFAULT_SENTINELS
from scalelab.errors import ConfigError

NORMALIZATIONS = ("NFC", "NFKC", "none")
NON_UTF8_POLICIES = ("fail", "skip")
TOKENIZER_TYPES = ("bpe", "unigram")
DATASET_NAME = re.compile(r"[a-z][a-z0-9_]*(/[a-z0-9_.]+)?")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where batches come from: `synthetic` (a learnable Markov task) or a prepared `tfds` dataset."""

    source: str = "synthetic"  # synthetic (a learnable Markov chain, nothing to prepare) or tfds (a prepared dataset)
    name: str = "scalelab_text"  # a TFDS dataset name, e.g. scalelab_text, lm1b or c4/en
    data_dir: str | None = None  # None: $SCALELAB_DATA_DIR or ~/.cache/scalelab/datasets
    seed: int = 0  # batch(step) is a pure function of (data seed, step)
    synthetic_branching: int = 4  # successors per token in the synthetic Markov chain
    corpus: str | None = None  # `data prepare` input: a directory, file or glob of .txt/.jsonl; None: default
    text_field: str = "text"  # the text key in .jsonl lines and in TFDS features
    normalization: str = "NFC"  # Unicode normalisation applied while cleaning: NFC, NFKC or none
    min_chars: int = 16  # documents shorter than this (after normalisation) are dropped
    max_chars: int | None = None  # documents longer than this are dropped; None: no limit
    non_utf8: str = "fail"  # a document that is not valid UTF-8: fail the prepare, or skip it and report it
    validation_fraction: float = 0.02  # share of documents (by content hash) held out for validation
    tokenizer: str = "bpe"  # sentencepiece model type: bpe or unigram; its vocab size is model.vocab_size
    sentinels: int = DEFAULT_SENTINELS  # <extra_id_i> pieces the tokenizer reserves for span corruption (ids 3+i)
    segment_ids: bool = True  # give packed rows segment ids and positions so attention stays in one document
    prefetch: int = 2  # batches built ahead by a background thread (0: build on demand)

    def __post_init__(self) -> None:
        if self.synthetic_branching < 1:
            raise ConfigError(f"data.synthetic_branching must be >= 1, got {self.synthetic_branching}")
        from scalelab.data import DATA_SOURCES  # the package's registry of batch sources

        choices = {
            "source": tuple(DATA_SOURCES),
            "normalization": NORMALIZATIONS,
            "non_utf8": NON_UTF8_POLICIES,
            "tokenizer": TOKENIZER_TYPES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                value = getattr(self, key)
                raise ConfigError(f"data.{key}: unknown value {value!r}; choose one of {', '.join(allowed)}")
        if not DATASET_NAME.fullmatch(self.name):
            raise ConfigError(
                f"data.name: {self.name!r} is not a TFDS dataset name; use lowercase letters, digits and _, "
                "optionally with a /config part (e.g. scalelab_text, c4/en)"
            )
        if not self.text_field:
            raise ConfigError("data.text_field must not be empty")
        if self.min_chars < 1:
            raise ConfigError(f"data.min_chars must be >= 1, got {self.min_chars}")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ConfigError(
                f"data.max_chars ({self.max_chars}) is smaller than data.min_chars ({self.min_chars}), so every "
                "document would be dropped; raise data.max_chars (null: no limit) or lower data.min_chars"
            )
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"data.validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.prefetch < 0:
            raise ConfigError(f"data.prefetch must be >= 0, got {self.prefetch}")
        if self.sentinels < 0:
            raise ConfigError(f"data.sentinels must be >= 0, got {self.sentinels}")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What the model learns from each row of tokens; data/objectives.py describes each objective."""

    name: str | None = None  # causal_lm, mlm, classification, span_corruption, prefix_lm; None: the family's
    mask_rate: float = 0.15  # mlm: share of positions chosen for prediction
    mask_token: int | None = None  # mlm: the [MASK] id; None: the source's (data/special.py), else must equal it
    noise_density: float = 0.15  # span_corruption: share of tokens moved into noise spans
    mean_span_length: float = 3.0  # span_corruption: average noise span length

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_rate < 1.0:
            raise ConfigError(f"objective.mask_rate must be in (0, 1), got {self.mask_rate}")
        if not 0.0 < self.noise_density < 1.0:
            raise ConfigError(f"objective.noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_span_length < 1.0:
            raise ConfigError(f"objective.mean_span_length must be >= 1, got {self.mean_span_length}")
