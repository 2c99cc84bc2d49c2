"""`scalelab train`: train one config in one run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from scalelab.cli.options import add_dry_run_arguments, add_overrides
from scalelab.cli.posttrain import load_stages
from scalelab.parallel.distributed import add_arguments as add_distributed_arguments
from scalelab.parallel.distributed import initialize as initialize_distributed
from scalelab.parallel.distributed import initialize_kwargs, startup_failure
from scalelab.parallel.liveness import LostPeer
from scalelab.parallel.supervisor import supervise, supervised
from scalelab.train.faults import EXIT_PEER_LOST, lost_peer_message


def register_train(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train a model from a config",
        description="Train a model. CONFIG is a YAML path or a name under configs/ (e.g. gpt-tiny).",
        epilog="example: scalelab train gpt-tiny --set model.n_layers=4 --set optimizer.lr=3e-4",
    )
    parser.add_argument("config", metavar="CONFIG", help="config path or name under configs/")
    add_overrides(parser)
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run directory (default: runs/<config name>); re-running in it resumes from its newest checkpoint, "
        "and a run there that no checkpoint can resume is refused unless --overwrite is given",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start the run in --run-dir over: delete its metrics, TensorBoard events and checkpoints first",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="start a new run from the parameters of another run's newest checkpoint (or of one step folder), "
        "with a fresh optimizer state at step 0; ignored when --run-dir already holds checkpoints",
    )
    parser.add_argument("--quiet", action="store_true", help="no summary and no progress bar")
    add_distributed_arguments(parser)
    add_dry_run_arguments(parser)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Load the config, train, and print the outcome."""
    distributed = initialize_kwargs(args)
    if distributed is not None and not supervised() and not args.dry_run:
        # Only another process can report process 0's loss. The supervisor imports no JAX and reads
        # no config: its child does both, and reports what is wrong with them.
        return supervise(
            lambda host: _lost_coordinator_line(args, host),
            EXIT_PEER_LOST,
            describe_startup=lambda reason: f"scalelab train: error: {startup_failure(distributed, reason)}",
        )

    from scalelab.errors import UserError
    from scalelab.train.config_io import load_config

    # Loading a config imports no JAX until its model section is checked, so a config name that is not there
    # is reported at once.
    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir or Path("runs") / cfg.name
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file, not a directory; give another --run-dir")

    import jax

    from scalelab.posttrain.runs import refuse_another_stage
    from scalelab.train.loop import train

    load_stages()  # `train` trains whatever stage the config names
    # `train` trains whatever stage the config names, so a config of one stage must not continue another's run.
    refuse_another_stage(run_dir, cfg.posttrain.stage, args.overwrite)
    if args.dry_run:
        from scalelab.cli.dry_run import dry_run_train

        return dry_run_train(args, cfg, run_dir)
    # Multi-host: join the other processes before anything touches a device.
    initialize_distributed(distributed)
    existing = "overwrite" if args.overwrite else "refuse"
    result = train(cfg, run_dir, quiet=args.quiet, init_from=args.init_from, existing=existing)
    if jax.process_index() != 0:  # one report per job, like the summary
        return 0
    evaluation = "" if result.eval_loss is None else f", eval loss {result.eval_loss:.4f}"
    print(
        f"done: {result.steps} steps, final loss {result.final_loss:.4f}{evaluation}; metrics in {run_dir}/metrics.jsonl"
    )
    return 0


def _lost_coordinator_line(args: argparse.Namespace, host: str) -> str:
    """The supervisor's line when process 0 is lost: where a requeue resumes from."""
    from scalelab.train.config_io import load_config

    run_dir = args.run_dir or Path("runs") / load_config(args.config, args.overrides).name
    return lost_peer_message(LostPeer(0, host, 0.0), run_dir)
