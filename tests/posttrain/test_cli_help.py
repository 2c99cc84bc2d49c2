"""The post-training commands' --help: examples that run as written and a description that fits a terminal."""

from __future__ import annotations

import shlex

import pytest

from scalelab.cli import build_parser
from scalelab.cli.posttrain import EXAMPLES
from scalelab.train.config_io import load_config


def _subparser(name: str):
    (subparsers,) = [a for a in build_parser()._actions if a.dest == "command"]
    return subparsers.choices[name]


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_each_stage_example_sets_the_file_it_needs_and_parses(stage):
    assert _subparser(stage).epilog == f"example: {EXAMPLES[stage]}"
    args = build_parser().parse_args(shlex.split(EXAMPLES[stage])[1:])
    assert args.command == stage and args.init_from is not None
    cfg = load_config(args.config, [f"posttrain.stage={stage}", *args.overrides])
    assert cfg.posttrain.train_file  # without it the example stopped at once: "needs posttrain.train_file"


def test_ppo_help_is_wrapped_and_says_what_the_run_reads():
    text = _subparser("ppo").format_help()
    description = text.split("\n\n")[1]
    assert max(len(line) for line in description.splitlines()) <= 80
    assert "posttrain.ppo.reward_model" in description and "posttrain.train_file" in description
    assert "SFT for dpo" not in text  # --init-from is described for PPO itself
