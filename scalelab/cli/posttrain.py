"""`scalelab sft|reward|dpo CONFIG`: post-training stages in the shape of `scalelab train`, and `scalelab chat-template`.

Each stage command is `scalelab train` with posttrain.stage set: the same overrides, run directory,
resume and exit codes. The stage's name is written into the run's config.yaml, so re-running the
command (or `scalelab train RUN_DIR/config.yaml`) resumes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scalelab.cli.options import add_overrides

# Per stage: the --init-from it starts from, and an example that runs as written.
INIT_FROM = {
    "sft": "the pre-trained run to start from",
    "reward": "the run whose decoder the reward model starts from (pre-trained or SFT)",
    "dpo": "the SFT run to start from; also the frozen reference unless posttrain.reference names one",
    "ppo": "the SFT run to start from; also the frozen reference unless posttrain.reference names one",
}
EXAMPLES = {
    "sft": "scalelab sft sft-tiny --init-from runs/base --run-dir runs/sft --set posttrain.train_file=sft.jsonl",
    "reward": "scalelab reward reward-tiny --init-from runs/sft --run-dir runs/rm --set posttrain.train_file=pairs.jsonl",
    "dpo": "scalelab dpo dpo-tiny --init-from runs/sft --run-dir runs/dpo --set posttrain.train_file=pairs.jsonl",
}
STAGE_COMMANDS = {
    "sft": "supervised fine-tuning on prompt/completion or chat JSONL (loss on completions only)",
    "reward": "train a reward model (scalar head, Bradley-Terry loss) on preference JSONL",
    "dpo": "direct preference optimisation against a frozen reference run on preference JSONL",
}


def add_stage_command(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """A stage command with `scalelab train`'s arguments; it runs with posttrain.stage=NAME."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=f"{help[0].upper()}{help[1:]}. CONFIG is a YAML path or a name under configs/ "
        f"(e.g. {name}-tiny); the run is an ordinary training run with posttrain.stage={name}, reading the JSONL "
        "file posttrain.train_file (docs/posttraining.md).",
        epilog=f"example: {EXAMPLES[name]}" if name in EXAMPLES else None,
    )
    parser.add_argument("config", metavar="CONFIG", help="config path or name under configs/")
    add_overrides(parser, "posttrain.train_file=data.jsonl")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run directory (default: runs/<config name>); re-running resumes"
    )
    parser.add_argument("--overwrite", action="store_true", help="start the run in --run-dir over")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help=f"{INIT_FROM[name]}; only seeds a new run (ignored when --run-dir holds checkpoints)",
    )
    parser.add_argument("--quiet", action="store_true", help="no summary and no progress bar")
    parser.set_defaults(func=run_stage, stage=name)
    return parser


def register_posttrain(subparsers: argparse._SubParsersAction) -> None:
    """Add `sft`, `reward`, `dpo` and `chat-template`."""
    for name, help in STAGE_COMMANDS.items():
        add_stage_command(subparsers, name, help)
    parser = subparsers.add_parser(
        "chat-template",
        help="store the default chat template with a config's tokenizer",
        description="Write chat_template.json (how {messages} chat examples are rendered) into the folder of the "
        "tokenizer CONFIG reads (data.name, data.tokenizer, model.vocab_size). An existing template is kept "
        "unless --force.",
    )
    parser.add_argument("config", metavar="CONFIG", help="config path or name under configs/")
    add_overrides(parser)
    parser.add_argument("--force", action="store_true", help="replace an existing template with the default")
    parser.set_defaults(func=run_chat_template)


def load_stages() -> None:
    """Register the post-training stages, for a command that trains them or loads their runs.

    Importing scalelab.posttrain registers them; it imports JAX, Flax and grain, which `--help` and
    the supervisor of a multi-process run do without, so the commands that need it call this.
    """
    import scalelab.posttrain  # noqa: F401


def run_stage(args: argparse.Namespace) -> int:
    """Load the config with posttrain.stage set, train it, and print the outcome."""
    from scalelab.train.config_io import load_config

    overrides = [f"posttrain.stage={args.stage}", *args.overrides]
    cfg = load_config(args.config, overrides)  # before JAX loads, as `scalelab train` does

    import jax

    from scalelab.train.loop import train

    load_stages()
    check_stage(cfg, args)
    if args.stage == "dpo" and cfg.posttrain.reference is None and args.init_from is not None:
        # The frozen reference is the model the policy starts from, unless the config names another.
        cfg = load_config(args.config, [*overrides, f"posttrain.reference={args.init_from}"])
    run_dir = stage_run_dir(args, cfg)
    existing = "overwrite" if args.overwrite else "refuse"
    result = train(cfg, run_dir, quiet=args.quiet, init_from=args.init_from, existing=existing)
    if jax.process_index() == 0:
        evaluation = "" if result.eval_loss is None else f", eval loss {result.eval_loss:.4f}"
        print(
            f"done: {args.stage} {result.steps} steps, final loss {result.final_loss:.4f}{evaluation}; "
            f"metrics in {run_dir}/metrics.jsonl"
        )
    return 0


def check_stage(cfg, args: argparse.Namespace) -> None:
    """The config trains this command's stage, and --init-from is a run that stage may start from."""
    from scalelab.errors import UserError
    from scalelab.posttrain.runs import check_init_from

    if cfg.posttrain.stage != args.stage:
        raise UserError(
            f"scalelab {args.stage} trains posttrain.stage={args.stage}, but --set posttrain.stage="
            f"{cfg.posttrain.stage} asks for another stage; run `scalelab {cfg.posttrain.stage}` instead, or drop that --set"
        )
    check_init_from(args.stage, args.init_from)


def stage_run_dir(args: argparse.Namespace, cfg) -> Path:
    """The run directory: --run-dir or runs/<config name>, refused when it is a file or holds another stage's run."""
    from scalelab.errors import UserError
    from scalelab.posttrain.runs import refuse_another_stage

    run_dir = args.run_dir or Path("runs") / cfg.name
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file, not a directory; give another --run-dir")
    refuse_another_stage(run_dir, args.stage, args.overwrite)
    return run_dir


def run_chat_template(args: argparse.Namespace) -> int:
    from scalelab.posttrain.chat import write_template
    from scalelab.posttrain.sources import open_tokenizer
    from scalelab.train.config_io import load_config

    cfg = load_config(args.config, [*args.overrides])
    _, folder = open_tokenizer(cfg)
    path = write_template(folder, force=args.force)
    print(f"chat template: {path}")
    return 0
