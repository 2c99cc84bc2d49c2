"""`scalelab eval RUN`: the eval loss of a run's newest checkpoint (or of one step folder) on its validation data."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from scalelab.cli.options import add_overrides
from scalelab.cli.posttrain import load_stages
from scalelab.inference.quant_modes import MODES

# The modes whose loss the trainer's own eval step measures: train.qat_bits fake-quantizes each weight on
# exactly the grid the mode stores (train/qat.py); modes that also quantize activations need the decoder.
WEIGHT_ONLY = tuple(name for name, mode in MODES.items() if mode.activations == "none" and not mode.float8)

EPILOG = """examples:
  scalelab eval runs/tiny                          # the newest checkpoint on the run's own eval batches
  scalelab eval runs/tiny --batches 100            # a closer estimate than the few batches a run logs
  scalelab eval runs/tiny/checkpoints/200 --json   # one step folder; one JSON object"""


def register_eval(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="measure a trained run's eval loss (and a post-training stage's eval metrics) on its validation data",
        description="Evaluate the newest intact checkpoint of RUN (or the step folder RUN names) on the fixed "
        "validation batches of the run's config: the same eval_loss the run logs, over as many batches as you "
        "ask. It trains nothing and writes nothing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run", metavar="RUN", type=Path, help="a run directory, its checkpoints/ folder or one step folder in it"
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        help="validation batches to average (default: the run's train.eval_batches)",
    )
    parser.add_argument(
        "--quantize",
        choices=WEIGHT_ONLY,
        default=None,
        metavar="MODE",
        help="also evaluate the model with its weights on a quantization grid, as generate --quantize MODE stores "
        f"them ({', '.join(WEIGHT_ONLY)}), and compare the two losses",
    )
    add_overrides(parser, "train.batch_size=32")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text line")
    parser.set_defaults(func=run_eval)


def _devices(cfg, root: Path) -> list | None:
    """None (the run's mesh over every device) when that mesh fits this host; else one device, said so."""
    import jax

    from scalelab.model.config import ConfigError
    from scalelab.parallel.mesh import MESH_AXES, resolve_axis_sizes

    try:
        resolve_axis_sizes({axis: getattr(cfg.mesh, axis) for axis in MESH_AXES}, jax.device_count())
        return None
    except ConfigError:
        print(
            f"scalelab eval: the mesh in {root / 'config.yaml'} does not fit the {jax.device_count()} device(s) here, "
            "so the checkpoint is evaluated on one device",
            file=sys.stderr,
        )
        return jax.devices()[:1]


def _on(cfg, devices: list | None):
    """`cfg` with a one-device mesh (keeping its axis rules) when `devices` is that one device."""
    if devices is None:
        return cfg
    import dataclasses

    from scalelab.parallel.config import MeshConfig

    return dataclasses.replace(cfg, mesh=MeshConfig(data=1, rules=cfg.mesh.rules))


def run_eval(args: argparse.Namespace) -> int:
    """Load the run's config, restore the checkpoint onto its mesh and average the eval sums."""
    from scalelab.errors import UserError
    from scalelab.train.checkpoint_store import run_root
    from scalelab.train.config_io import load_config
    from scalelab.train.evaluation import evaluate_checkpoint

    load_stages()  # the run may be a post-training stage's

    if args.batches is not None and args.batches < 1:
        raise UserError(f"--batches must be at least 1, got {args.batches}")
    root = run_root(args.run)
    if root is None:
        what = "does not exist" if not args.run.exists() else "is not a run directory or one of its checkpoints"
        raise UserError(f"{args.run} {what}; give a run directory that scalelab train wrote (--run-dir)")
    overrides = [*args.overrides, *([] if args.batches is None else [f"train.eval_batches={args.batches}"])]
    cfg = load_config(root / "config.yaml", overrides)
    if cfg.posttrain.stage == "ppo":
        raise UserError(
            f"{root} is a PPO run, whose eval is its rollouts' reward; judge its samples with scalelab sentiment "
            "judge, or read its metrics.jsonl"
        )
    if args.quantize is not None and cfg.train.qat_bits:
        raise UserError(
            f"{root} already evaluates on a quantization grid (train.qat_bits={cfg.train.qat_bits}); drop "
            "--quantize, or add --set train.qat_bits=0 to compare against its unquantized weights"
        )
    devices = _devices(cfg, root)
    step_dir, metrics = evaluate_checkpoint(_on(cfg, devices), args.run, devices=devices)
    plain = None
    if args.quantize is not None:
        mode = MODES[args.quantize]
        grid = [f"train.qat_bits={mode.bits}", f"train.qat_group_size={mode.group_size}"]
        plain = metrics
        quantized = _on(load_config(root / "config.yaml", [*overrides, *grid]), devices)
        _, metrics = evaluate_checkpoint(quantized, args.run, devices=devices)
    train = cfg.train
    data = cfg.data.name if cfg.data.source == "tfds" else cfg.data.source
    report = {
        "run": str(root),
        "step": int(step_dir.name),
        "data": data,
        "batches": train.eval_batches,
        "tokens": train.eval_batches * train.batch_size * train.seq_len,
        **metrics,
    }
    if plain is not None:
        report |= {"quantize": args.quantize, "unquantized": plain}
    if args.json:
        print(json.dumps(report))
        return 0
    loss = metrics["eval_loss"]
    others = "".join(f", {key} {value:.4f}" for key, value in metrics.items() if key != "eval_loss")
    weights = "" if plain is None else f" with {args.quantize} weights"
    line = (
        f"{root} step {report['step']} on {data} validation ({train.eval_batches} batches of {train.batch_size} x "
        f"{train.seq_len} tokens): eval_loss {loss:.4f}{weights} (perplexity {math.exp(min(loss, 700.0)):.4g}){others}"
    )
    if plain is not None:
        line += f"; unquantized {plain['eval_loss']:.4f}, so {loss / plain['eval_loss']:.4f}x"
    print(line)
    return 0
