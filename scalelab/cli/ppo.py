"""`scalelab ppo CONFIG`: RLHF with PPO in the shape of the other stage commands (sft, reward, dpo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from scalelab.cli.posttrain import add_stage_command

HELP = "RLHF with PPO: sample from the SFT policy, score with a reward model run, KL-penalised clipped updates"


def register_ppo(subparsers: argparse._SubParsersAction) -> None:
    """Add `ppo`: `scalelab sft`'s arguments, run by PPO's loop (posttrain/ppo_run.py)."""
    parser = add_stage_command(subparsers, "ppo", HELP)
    parser.epilog = (
        "example: scalelab ppo ppo-tiny --init-from runs/sft --run-dir runs/ppo "
        "--set posttrain.ppo.reward_model=runs/reward --set posttrain.train_file=prompts.jsonl\n"
        "(the frozen reference defaults to --init-from; posttrain.beta is the KL coefficient, "
        "posttrain.ppo.target_kl makes it adaptive)"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(func=run_ppo_command)


def run_ppo_command(args: argparse.Namespace) -> int:
    """Load the config with posttrain.stage=ppo, run PPO and print the outcome."""
    from scalelab.errors import UserError
    from scalelab.posttrain.ppo_run import run_ppo
    from scalelab.train.config_io import load_config

    cfg = load_config(args.config, ["posttrain.stage=ppo", *args.overrides])
    run_dir = args.run_dir or Path("runs") / cfg.name
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file, not a directory; give another --run-dir")
    existing = "overwrite" if args.overwrite else "refuse"
    result = run_ppo(cfg, run_dir, init_from=args.init_from, existing=existing, quiet=args.quiet)
    last = result.final
    summary = f"reward {last['reward']:.3f}, KL {last['kl']:.3f}, beta {last['beta']:.4f}" if last else "nothing to do"
    print(f"done: ppo {result.steps} steps, {summary}; metrics in {run_dir}/metrics.jsonl")
    return 0
