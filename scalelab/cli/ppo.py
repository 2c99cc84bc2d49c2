"""`scalelab ppo CONFIG`: RLHF with PPO in the shape of the other stage commands (sft, reward, dpo); and
`scalelab sentiment data|pairs|judge`, the steps of the offline RLHF demonstration (docs/ppo.md)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from scalelab.cli.options import add_group
from scalelab.cli.posttrain import add_stage_command, check_stage, stage_run_dir

HELP = "RLHF with PPO: sample from the SFT policy, score with a reward model run, KL-penalised clipped updates"
# The default smallest VADER difference a kept pair has (`--min-margin`), chosen from the demo's
# pairs: a reward model trained on every non-tied pair agreed with VADER on 51% of held-out pairs whose
# scores differ by less than 0.25, 76% at 0.25-0.5 and 81% from 0.5; trained and judged on pairs of
# margin >= 0.5 it agreed on 81% and 82% in two runs (docs/ppo.md).
DEFAULT_MIN_MARGIN = 0.5


def register_ppo(subparsers: argparse._SubParsersAction) -> None:
    """Add `ppo`: `scalelab sft`'s arguments, run by PPO's loop (posttrain/ppo_run.py)."""
    parser = add_stage_command(subparsers, "ppo", HELP)
    parser.epilog = (
        "example: scalelab ppo ppo-tiny --init-from runs/sft --run-dir runs/ppo "
        "--set posttrain.ppo.reward_model=runs/reward --set posttrain.train_file=prompts.jsonl\n"
        "(the frozen reference defaults to --init-from; posttrain.beta is the KL coefficient, "
        "posttrain.ppo.target_kl makes it adaptive)"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the epilog's line break; wrap the description
    parser.description = textwrap.fill(
        f"{HELP}. CONFIG is a YAML path or a name under configs/ (e.g. ppo-tiny); the run reads prompts from "
        "posttrain.train_file and is scored by the reward-model run posttrain.ppo.reward_model (docs/ppo.md).",
        width=80,
    )
    parser.set_defaults(func=run_ppo_command)


def run_ppo_command(args: argparse.Namespace) -> int:
    """Load the config with posttrain.stage=ppo, run PPO and print the outcome."""
    from scalelab.posttrain.ppo_run import run_ppo
    from scalelab.train.config_io import load_config

    cfg = load_config(args.config, ["posttrain.stage=ppo", *args.overrides])
    check_stage(cfg, args)
    run_dir = stage_run_dir(args, cfg)
    existing = "overwrite" if args.overwrite else "refuse"
    result = run_ppo(cfg, run_dir, init_from=args.init_from, existing=existing, quiet=args.quiet)
    last = result.final
    summary = f"reward {last['reward']:.3f}, KL {last['kl']:.3f}, beta {last['beta']:.4f}" if last else "nothing to do"
    print(f"done: ppo {result.steps} steps, {summary}; metrics in {run_dir}/metrics.jsonl")
    return 0


def register_sentiment(subparsers: argparse._SubParsersAction) -> None:
    """Add `sentiment data`, `sentiment pairs` and `sentiment judge`."""
    group = add_group(
        subparsers,
        "sentiment",
        help="the offline RLHF demonstration's steps: corpus prompts, VADER-labelled pairs, held-out judgement",
        description="Positive-sentiment continuation (Ziegler et al. 2019) on the embedded corpus, with the VADER "
        "lexicon as the human: see docs/ppo.md for the whole chain (make posttrain-demo).",
    )
    data = group.add_parser(
        "data",
        help="write sft.jsonl, prompts.jsonl (train split) and heldout.jsonl (validation split) into OUT",
        description="Openings of corpus lines: SFT examples (opening -> what the line says next), prompts for "
        "pair sampling and PPO, and held-out prompts for judging. Needs `scalelab data prepare`.",
    )
    data.add_argument("out", metavar="OUT", type=Path, help="folder for the JSONL files")
    data.add_argument("--sft", type=int, default=3000, help="SFT examples (default 3000)")
    data.add_argument("--prompts", type=int, default=3000, help="training prompts (default 3000)")
    data.add_argument("--heldout", type=int, default=200, help="held-out prompts (default 200)")
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=_run_data)
    pairs = group.add_parser(
        "pairs",
        help="sample two continuations per prompt from an SFT run; VADER picks the chosen one",
        description="Writes OUT/pairs.jsonl and OUT/pairs-heldout.jsonl ({prompt, chosen, rejected}); ties are "
        "skipped, and so are pairs whose VADER scores differ by less than --min-margin (in both files alike).",
    )
    pairs.add_argument("sft_run", metavar="SFT_RUN", type=Path, help="the SFT run directory")
    pairs.add_argument("prompts", metavar="PROMPTS", type=Path, help='JSONL with a "prompt" per line')
    pairs.add_argument("out", metavar="OUT", type=Path, help="folder for the pair files")
    pairs.add_argument("--new-tokens", type=int, default=16, help="longest continuation, in tokens (default 16)")
    pairs.add_argument("--seed", type=int, default=0)
    pairs.add_argument(
        "--min-margin",
        type=float,
        default=DEFAULT_MIN_MARGIN,
        help="drop pairs whose VADER compound scores differ by less than this: near-ties are labeller noise "
        f"(default {DEFAULT_MIN_MARGIN}; 0 keeps every pair that is not a tie)",
    )
    pairs.set_defaults(func=_run_pairs)
    judge = group.add_parser(
        "judge",
        help="mean VADER on held-out prompts against KL to the reference, per run; plot and summary",
        description="Writes OUT/summary.json, OUT/summary.md and OUT/reward_kl.png/.svg.",
    )
    judge.add_argument("runs", metavar="RUN_DIR", type=Path, nargs="+", help="runs to judge (sft, ppo, dpo)")
    judge.add_argument("--reference", type=Path, required=True, help="the SFT run every KL is measured against")
    judge.add_argument("--prompts", type=Path, required=True, help="held-out prompts (heldout.jsonl)")
    judge.add_argument("--out", type=Path, required=True, help="folder for the summary and the plot")
    judge.add_argument("--new-tokens", type=int, default=16, help="longest continuation, in tokens (default 16)")
    judge.add_argument("--samples", type=int, default=4, help="continuations per prompt (default 4)")
    judge.add_argument(
        "--reward-model",
        nargs=2,
        type=Path,
        metavar=("RUN_DIR", "PAIRS"),
        help="also report this reward-model run's pairwise accuracy against VADER on these held-out pairs",
    )
    judge.add_argument(
        "--pretrained",
        type=Path,
        metavar="RUN_DIR",
        help="also report the SFT target: the --reference SFT run's held-out completion loss against this "
        "pre-trained run's, on the SFT run's held-out examples",
    )
    judge.set_defaults(func=_run_judge)


def _run_data(args: argparse.Namespace) -> int:
    from scalelab.posttrain.demo import DemoData, write_demo_data

    counts = write_demo_data(
        args.out, DemoData(sft=args.sft, prompts=args.prompts, heldout=args.heldout, seed=args.seed)
    )
    print("wrote " + ", ".join(f"{args.out / name} ({n} lines)" for name, n in counts.items()))
    return 0


def _run_pairs(args: argparse.Namespace) -> int:
    from scalelab.posttrain.demo import write_pairs

    counts = write_pairs(
        args.sft_run, args.prompts, args.out, args.new_tokens, seed=args.seed, min_margin=args.min_margin
    )
    print(", ".join(f"{name}: {n}" for name, n in counts.items()))
    return 0


def _run_judge(args: argparse.Namespace) -> int:
    from scalelab.posttrain.demo_judge import judge

    reward = None if args.reward_model is None else tuple(args.reward_model)
    judge(
        args.runs,
        args.reference,
        args.prompts,
        args.out,
        args.new_tokens,
        args.samples,
        reward=reward,
        pretrained=args.pretrained,
    )
    print((args.out / "summary.md").read_text(), end="")
    print(f"plot: {args.out / 'reward_kl.png'}")
    return 0
