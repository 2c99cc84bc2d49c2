"""Training objectives, chosen by `objective.name` (default: the family's) through OBJECTIVES.

Sources yield rows of text: `inputs` (batch, seq_len) with next-token `targets` and
`weights`, optionally `segment_ids` and `positions`. An objective turns them into what a
family trains on. Its random draws come from (data seed, stream, step) for the whole global
batch and are then cut to this process's rows, so batch(step) stays a pure function of
(seed, step) on any number of processes.

The ids an objective writes that are not text, [MASK] and the span sentinels, come from one
place, `special_ids`: a text source's tokenizer reserved them (data/special.py has the
layout), and the synthetic source uses the same layout and leaves them out of its language.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from scalelab.data import BatchSource, process_rows
from scalelab.data.special import SpecialIds, layout
from scalelab.data.storage import DataError, tokenizer_command
from scalelab.model.config import ConfigError, SequenceLengths

if TYPE_CHECKING:
    from scalelab.data.tokens import TokenStore

# The root config (scalelab.train.config.Config). Objectives read its data, model, objective and
# train sections; data/ sits below train/, so it names the type without importing it.
Config = Any

Batch = dict[str, np.ndarray]
TRAIN_STREAM, EVAL_STREAM = 0, 1
SALT = 0x0B1EC7  # keeps these draws apart from the source's own, which use the same data seed
START_ID = 0  # the decoder's first input (T5 starts from its pad id)


class Draws:
    """Random numbers for one global batch, cut to this process's rows; the draw order is fixed."""

    def __init__(self, seed: int, stream: int, index: int, global_rows: int, rows: slice):
        self.rng = np.random.default_rng([seed, SALT, stream, index])
        self.global_rows, self.rows = global_rows, rows

    def uniform(self, length: int) -> np.ndarray:
        """Uniform [0, 1) draws of shape (rows, length)."""
        return self.rng.random((self.global_rows, length))[self.rows]

    def integers(self, high: int, length: int) -> np.ndarray:
        """Uniform integers in [0, high) of shape (rows, length)."""
        return self.rng.integers(high, size=(self.global_rows, length))[self.rows]


def _keep(batch: Batch, *keys: str) -> Batch:
    return {key: batch[key] for key in keys if key in batch}


def _shift_right(targets: np.ndarray) -> np.ndarray:
    """Decoder inputs: START_ID, then the targets up to the last one (teacher forcing)."""
    return np.concatenate([np.full((len(targets), 1), START_ID, targets.dtype), targets[:, :-1]], axis=1)


def mask_tokens(batch: Batch, draws: Draws, cfg: Config, special: SpecialIds) -> Batch:
    """BERT's MLM: choose mask_rate of the positions; 80% become [MASK] (special.mask), 10% a random token, 10% stay.

    Positions with source weight 0 (padding) are never chosen. Targets are the original tokens
    and the loss weights select the chosen positions only.
    """
    tokens = batch["inputs"]
    candidate = batch["weights"] > 0
    # A random rank per position; each row chooses its mask_rate share of candidates, rounded.
    rank = np.argsort(np.argsort(np.where(candidate, draws.uniform(tokens.shape[1]), 2.0), axis=1), axis=1)
    chosen = rank < np.round(candidate.sum(axis=1) * cfg.objective.mask_rate)[:, None]
    action = draws.uniform(tokens.shape[1])
    random_tokens = draws.integers(cfg.model.vocab_size, tokens.shape[1]).astype(tokens.dtype)
    corrupted = np.where(chosen & (action < 0.8), special.mask, tokens)
    corrupted = np.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, corrupted)
    return {
        "inputs": corrupted.astype(tokens.dtype),
        "targets": tokens,
        "weights": chosen.astype(np.float32),
        **_keep(batch, "segment_ids", "positions"),
    }


def span_counts(seq_len: int, settings: Any) -> tuple[int, int]:
    """(noise tokens, noise spans) of every row: fixed, so every batch has the same shapes."""
    noise = min(max(round(seq_len * settings.noise_density), 1), seq_len - 1)
    spans = min(max(round(noise / settings.mean_span_length), 1), noise, seq_len - noise)
    return noise, spans


def _random_partition(total: int, parts: int, uniform: np.ndarray) -> np.ndarray:
    """Split `total` into `parts` positive lengths per row, uniformly over compositions."""
    cuts = np.sort(np.argsort(uniform, axis=1)[:, : parts - 1] + 1, axis=1)
    edges = np.concatenate([np.zeros((len(uniform), 1), int), cuts, np.full((len(uniform), 1), total)], axis=1)
    return np.diff(edges, axis=1)


def _collapse_runs(tokens: np.ndarray, dropped: np.ndarray, run: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """Replace each run of dropped positions by its sentinel (sentinels[run id]); rows stay equal length."""
    first = dropped & ~np.concatenate([np.zeros((len(dropped), 1), bool), dropped[:, :-1]], axis=1)
    values = np.where(first, sentinels[run], tokens)
    kept = ~dropped | first
    return values[kept].reshape(len(tokens), -1).astype(tokens.dtype)


def corrupt_spans(batch: Batch, draws: Draws, cfg: Config, special: SpecialIds) -> Batch:
    """T5's span corruption: noise spans become sentinels in the inputs; the targets spell them out.

    Each row alternates kept runs and noise spans, starting with a kept run, with span lengths
    drawn at random. Span i is sentinel i (special.sentinels[i]) in the encoder inputs; the
    targets are sentinel i followed by span i's tokens, for every span. A packed row is
    corrupted as one text, so `segment_ids` and `positions` are dropped.
    """
    tokens = batch["inputs"]
    rows, n = tokens.shape
    noise, spans = span_counts(n, cfg.objective)
    noise_lengths = _random_partition(noise, spans, draws.uniform(max(noise - 1, 1)))
    kept_lengths = _random_partition(n - noise, spans, draws.uniform(max(n - noise - 1, 1)))
    runs = np.stack([kept_lengths, noise_lengths], axis=2).reshape(rows, 2 * spans)
    starts = np.zeros((rows, n + 1), int)
    starts[np.arange(rows)[:, None], np.cumsum(runs, axis=1)] = 1
    run_index = np.cumsum(starts[:, :n], axis=1)  # 2i: kept run i; 2i + 1: noise span i
    is_noise, span = run_index % 2 == 1, run_index // 2
    sentinels = np.asarray(special.sentinels[:spans])
    targets = _collapse_runs(tokens, ~is_noise, span, sentinels)
    return {
        "inputs": _collapse_runs(tokens, is_noise, span, sentinels),
        "decoder_inputs": _shift_right(targets),
        "targets": targets,
        "weights": np.ones(targets.shape, np.float32),
    }


def split_prefix(batch: Batch, draws: Draws, cfg: Config, special: SpecialIds | None) -> Batch:
    """Prefix to suffix: each row is cut at a random point; the encoder reads the prefix, the decoder the rest.

    Both halves are left-aligned and padded to seq_len: encoder padding gets segment 0 (real
    tokens segment 1), so neither the encoder nor cross-attention sees it, and decoder
    padding has loss weight 0.
    """
    tokens = batch["inputs"]
    n = tokens.shape[1]
    cut = 1 + np.floor(draws.uniform(1) * (n - 1)).astype(int)  # (rows, 1), in 1 .. n-1
    column = np.arange(n)[None, :]
    prefix = column < cut
    suffix = column < n - cut
    targets = np.where(suffix, np.take_along_axis(tokens, np.minimum(column + cut, n - 1), axis=1), 0)
    return {
        "inputs": np.where(prefix, tokens, 0).astype(tokens.dtype),
        "segment_ids": prefix.astype(np.int32),
        "decoder_inputs": _shift_right(targets.astype(tokens.dtype)),
        "targets": targets.astype(tokens.dtype),
        "weights": suffix.astype(np.float32),
    }


def use_labels(batch: Batch, draws: Draws, cfg: Config, special: SpecialIds | None) -> Batch:
    """Sequence classification: the source's `labels` (one per row) are the targets of the classifier."""
    if "labels" not in batch:
        raise ConfigError(
            f"objective.name=classification needs a source that yields `labels`; data.source={cfg.data.source} "
            "yields none (use objective.name=mlm with model.n_classes=0 to pretrain instead)"
        )
    labels = batch["labels"].astype(np.int32)[:, None]
    return {
        "targets": labels,
        "weights": np.ones(labels.shape, np.float32),
        **_keep(batch, "inputs", "segment_ids", "positions"),
    }


@dataclasses.dataclass(frozen=True)
class Objective:
    """A named objective: the families it trains, its batch transform and the lengths it gives the model."""

    families: tuple[str, ...]
    # (rows, draws, config, special ids) -> batch; None: the rows train as they are
    transform: Callable[[Batch, Draws, Config, SpecialIds | None], Batch] | None
    lengths: Callable[[int, Any], SequenceLengths]  # (seq_len, objective settings) -> lengths
    classifier: bool = False  # trains a classification head (model.n_classes > 0)
    special: str | None = None  # the reserved ids it writes: "mask" or "sentinels"


def _same_lengths(seq_len: int, settings: Any) -> SequenceLengths:
    return SequenceLengths(seq_len, seq_len)


def _span_lengths(seq_len: int, settings: Any) -> SequenceLengths:
    noise, spans = span_counts(seq_len, settings)
    return SequenceLengths(seq_len - noise + spans, noise + spans)


OBJECTIVES: dict[str, Objective] = {
    "causal_lm": Objective(("gpt",), None, _same_lengths),
    "mlm": Objective(("bert",), mask_tokens, _same_lengths, special="mask"),
    "classification": Objective(("bert",), use_labels, _same_lengths, classifier=True),
    "span_corruption": Objective(("t5",), corrupt_spans, _span_lengths, special="sentinels"),
    "prefix_lm": Objective(("t5",), split_prefix, _same_lengths),
}
FAMILY_DEFAULTS = {"gpt": "causal_lm", "bert": "mlm", "t5": "span_corruption"}


def objective_name(cfg: Config) -> str:
    """`objective.name`, or the family's default (classification for a bert with a classifier)."""
    if cfg.objective.name is not None:
        return cfg.objective.name
    return "classification" if cfg.model.n_classes else FAMILY_DEFAULTS[cfg.model.family]


def validate_objective(cfg: Config) -> None:
    """Raise ConfigError when the objective is unknown or does not fit the model."""
    name = objective_name(cfg)
    if name not in OBJECTIVES:
        raise ConfigError(f"objective.name: unknown value {name!r}; choose one of {', '.join(OBJECTIVES)}")
    objective = OBJECTIVES[name]
    if cfg.model.family not in objective.families:
        raise ConfigError(
            f"objective.name={name} trains model.family {' or '.join(objective.families)}, not {cfg.model.family}; "
            f"use {FAMILY_DEFAULTS[cfg.model.family]} or change the family"
        )
    if objective.classifier != bool(cfg.model.n_classes):
        need = "a classifier (model.n_classes > 0)" if objective.classifier else "model.n_classes=0"
        raise ConfigError(f"objective.name={name} needs {need}, but model.n_classes={cfg.model.n_classes}")
    mask_token = cfg.objective.mask_token
    if mask_token is not None and not 0 <= mask_token < cfg.model.vocab_size:
        raise ConfigError(f"objective.mask_token ({mask_token}) is not below model.vocab_size")
    if objective.special is None:
        return
    needed = sentinels_needed(cfg)
    if cfg.data.source == "synthetic":
        top = max(special_ids(cfg).reserved)
        if top >= cfg.model.vocab_size:
            raise ConfigError(
                f"objective.name={name} writes the reserved ids up to {top} (data/special.py), which "
                f"model.vocab_size={cfg.model.vocab_size} does not hold; raise model.vocab_size above {top}"
            )
    elif needed > cfg.data.sentinels:
        raise ConfigError(
            f"objective.name=span_corruption cuts each row of train.seq_len={cfg.train.seq_len} tokens into {needed} "
            f"noise spans (objective.noise_density, objective.mean_span_length), one sentinel each, but the tokenizer "
            f"reserves data.sentinels={cfg.data.sentinels}; raise data.sentinels to {needed} or more and retrain the "
            f"tokenizer ({tokenizer_command(dataclasses.replace(cfg.data, sentinels=needed), cfg.model.vocab_size)} "
            "--force), or shorten train.seq_len"
        )


def sentinels_needed(cfg: Config) -> int:
    """How many sentinels the objective writes into a row: one per noise span (0 without span corruption)."""
    if OBJECTIVES[objective_name(cfg)].special != "sentinels":
        return 0
    return span_counts(cfg.train.seq_len, cfg.objective)[1]


def special_ids(cfg: Config, store: TokenStore | None = None) -> SpecialIds | None:
    """The [MASK] and sentinel ids the objective writes; None when it writes neither.

    This is the one place that decides them. A text source's ids are its tokenizer's reserved
    pieces (`store`), which must exist and match data.sentinels: a tokenizer trained before they
    were reserved is an error that says to retrain it, never a fallback to ids that are text
    there. Without a store (the synthetic source) they are the fixed layout of
    data/special.py with as many sentinels as a row needs. An explicit
    objective.mask_token must equal the [MASK] id either way.
    """
    name = objective_name(cfg)
    if OBJECTIVES[name].special is None:
        return None
    source = "the synthetic source"
    ids = layout(sentinels_needed(cfg))
    if store is not None:
        source = f"the tokenizer at {store.path}"
        retrain = f"{tokenizer_command(cfg.data, cfg.model.vocab_size)} --force"
        ids = store.tokenizer.special
        if ids is None:
            raise DataError(
                f"{source} was trained before scalelab reserved [MASK] and sentinel pieces, so objective.name={name} "
                f"has no ids of its own to write (the ids it used to take are text there); retrain it: {retrain}"
            )
        if len(ids.sentinels) != cfg.data.sentinels:
            raise DataError(
                f"{source} reserves {len(ids.sentinels)} sentinels but data.sentinels={cfg.data.sentinels}; set "
                f"data.sentinels={len(ids.sentinels)}, or retrain it with {cfg.data.sentinels}: {retrain}"
            )
    if OBJECTIVES[name].special == "mask" and cfg.objective.mask_token not in (None, ids.mask):
        raise ConfigError(
            f"objective.mask_token={cfg.objective.mask_token} disagrees with {source}, whose [MASK] is id {ids.mask}; "
            "leave objective.mask_token unset to use it"
        )
    return ids


def model_lengths(cfg: Config) -> SequenceLengths:
    """What one row of train.seq_len tokens puts through the model under the objective."""
    return OBJECTIVES[objective_name(cfg)].lengths(cfg.train.seq_len, cfg.objective)


class ObjectiveSource:
    """A source whose batches pass through an objective's transform; everything else is the wrapped source's."""

    def __init__(self, source: BatchSource, objective: Objective, cfg: Config, rows: slice):
        self.source, self.objective, self.cfg, self.rows = source, objective, cfg, rows
        # Sources of tokenized text expose their token store, whose tokenizer holds the reserved ids.
        self.special = special_ids(cfg, getattr(source, "store", None))

    def _apply(self, batch: Batch, stream: int, index: int) -> Batch:
        draws = Draws(self.cfg.data.seed, stream, index, self.cfg.train.batch_size, self.rows)
        return self.objective.transform(batch, draws, self.cfg, self.special)

    def batch(self, step: int) -> Batch:
        """This process's rows of the training batch at `step`, transformed."""
        return self._apply(self.source.batch(step), TRAIN_STREAM, step)

    def eval_batch(self, index: int) -> Batch:
        """This process's rows of validation batch `index`, transformed."""
        return self._apply(self.source.eval_batch(index), EVAL_STREAM, index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)


def with_objective(cfg: Config, source: BatchSource, process_index: int, process_count: int) -> BatchSource:
    """`source` seen through the configured objective (unchanged when the objective uses rows as they are)."""
    objective = OBJECTIVES[objective_name(cfg)]
    if objective.transform is None:
        return source
    return ObjectiveSource(source, objective, cfg, process_rows(cfg.train.batch_size, process_index, process_count))
