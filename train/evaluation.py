"""Evaluation: the eval sums of a run's fixed validation batches, during training and of a saved checkpoint.

`scalelab eval` measures a checkpoint on its run's validation batches, or through overrides on
another dataset's (the loss of a sweep's models on a second corpus, say), without training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scalelab.data import BatchSource, make_source
from scalelab.train.checkpoint_params import load_params
from scalelab.train.config import Config
from scalelab.train.stage import stage_of
from scalelab.train.trainer import Trainer

EVAL_ADVICE = "evaluate a checkpoint with the config it was trained with (--set may change data and train.eval_*)"


def evaluate_all(trainer: Trainer, params: Any, source: BatchSource) -> dict[str, float]:
    """`eval_loss`, and eval_<name> for each further "<name>_sum" a post-training stage's eval step returns."""
    totals: dict[str, float] = {}
    for index in range(trainer.cfg.train.eval_batches):
        sums = trainer.eval_step(params, trainer.put_batch(source.eval_batch(index)))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    weight = max(totals.pop("weight_sum"), 1.0)
    return {f"eval_{key.removesuffix('_sum')}": value / weight for key, value in totals.items()}


def evaluate_checkpoint(
    cfg: Config, source: Path, command: str = "eval", devices: list[Any] | None = None
) -> tuple[Path, dict[str, float]]:
    """(the step folder read, its eval metrics): `source` is a run directory (its newest intact checkpoint),
    its checkpoints/ folder or one step folder; `cfg` says the model, the mesh (over `devices`, default all)
    and the validation data."""
    trainer = Trainer.build(cfg, devices)
    stage = stage_of(cfg)
    make = make_source if stage is None else stage.source
    data = make(cfg, *trainer.data_shard())
    params, step_dir = load_params(source, cfg, trainer, flag="RUN", command=command, advice=EVAL_ADVICE)
    return step_dir, evaluate_all(trainer, params, data)
