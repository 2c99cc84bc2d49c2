"""Parameters out of another run's checkpoint: for `--init-from` (a new run's start) and `scalelab generate`.

Only the parameters are read (the optimizer state stays behind), onto the caller's mesh, after the
checkpoint's manifest and its fit with the caller's config are checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from scalelab.train.checkpoint_compat import CheckpointError, check_compatible, flat_shapes, read_meta, stored_shapes
from scalelab.train.checkpoint_store import CHECKPOINT_DIR, saved_steps, warn
from scalelab.train.config import Config
from scalelab.train.manifest import verify_manifest
from scalelab.train.trainer import Trainer


def _init_source(source: Path, flag: str, command: str) -> Path:
    """The step folder `flag` names: a step folder, or the newest intact one of a run or checkpoints dir."""
    if not source.exists():
        raise CheckpointError(
            f"{flag} {source} does not exist; give a run directory, its checkpoints/ folder or one step folder"
        )
    if (source / "state").is_dir():
        problem = verify_manifest(source)
        if problem:
            raise CheckpointError(f"{flag} {source}: the checkpoint is corrupt: {problem}")
        return source
    root = source / CHECKPOINT_DIR if (source / CHECKPOINT_DIR).is_dir() else source
    steps = saved_steps(root)
    if not steps and (source / "config.yaml").is_file():
        raise CheckpointError(
            f"{flag} {source}: that run saved no checkpoint (they are off unless checkpoint.every or "
            "checkpoint.every_minutes is set); train it again with --overwrite --set checkpoint.every=STEPS, "
            "which also saves at its last step"
        )
    if not steps:
        raise CheckpointError(
            f"{flag} {source}: no checkpoints there; give a run directory, its checkpoints/ folder or one step folder"
        )
    for step in reversed(steps):
        problem = verify_manifest(root / str(step))
        if problem is None:
            return root / str(step)
        warn(
            f"{flag} {source}: checkpoint {root / str(step)} is corrupt ({problem}); trying the one before it", command
        )
    raise CheckpointError(f"{flag} {source}: every checkpoint in {root} is corrupt")


INIT_FROM_ADVICE = "--init-from needs a run whose model has the same shape: give one, or drop --init-from"


def load_params(
    source: Path,
    cfg: Config,
    trainer: Trainer,
    flag: str = "--init-from",
    command: str = "train",
    advice: str = INIT_FROM_ADVICE,
) -> tuple[Any, Path]:
    """Parameters from a run's checkpoint on `trainer`'s mesh; messages name the flag that gave `source`."""
    step_dir = _init_source(Path(source).absolute(), flag, command)
    abstract = {"params": trainer.abstract_state()["params"]}
    stored = {k: v for k, v in stored_shapes(step_dir).items() if k.startswith("params.")}
    check_compatible(read_meta(step_dir), stored, flat_shapes(abstract), cfg, step_dir, advice)
    restored = ocp.PyTreeCheckpointer().restore(
        epath.Path(step_dir / "state"),
        args=ocp.args.PyTreeRestore(
            item=abstract,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True,  # the optimizer state stays behind: fine-tuning starts it afresh
        ),
    )
    return restored["params"], step_dir
