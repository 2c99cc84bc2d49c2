"""A checkpoint's JSON record, and whether a checkpoint fits the config that wants to use it.

The record (`meta`, saved next to the arrays) holds the step, data position, RNG seeds, resolved
config, data and tokenizer reference and mesh. A resume or `--init-from` compares the stored config
and array shapes with its own and refuses, naming the keys and arrays that differ.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from scalelab.errors import ConfigError
from scalelab.train.config import Config
from scalelab.train.config_io import to_dict
from scalelab.train.trainer import Trainer
from scalelab.units import flatten

FORMAT_VERSION = 1
# Model keys a resume may change: they affect speed, memory or regularisation, not what the weights mean.
RESUMABLE_MODEL_KEYS = frozenset({"dtype", "remat", "dropout"})
_SHOWN_PROBLEMS = 3
RESUME_ADVICE = (
    "use the checkpoint's values, or start a new run in another --run-dir (with --init-from to start from its "
    "parameters)"
)
# When the parameters' shapes differ, --init-from cannot seed a new run from them either.
RESHAPED_ADVICE = "use the checkpoint's values, or start a new run in another --run-dir"


class CheckpointError(ConfigError):
    """A checkpoint cannot be used; the message names it and what to do instead."""


def data_reference(cfg: Config) -> dict[str, Any]:
    """What the batches are made of: the source and, for tfds, the dataset and tokenizer folders."""
    reference: dict[str, Any] = {"source": cfg.data.source, "name": cfg.data.name, "seed": cfg.data.seed}
    if cfg.data.source == "tfds":
        from scalelab.data.storage import dataset_version_dir, resolve_data_dir, tokenizer_dir

        data_dir = resolve_data_dir(cfg.data.data_dir)
        version = dataset_version_dir(data_dir, cfg.data.name)
        reference["data_dir"] = str(data_dir)
        reference["dataset"] = None if version is None else str(version)
        reference["tokenizer"] = (
            None
            if version is None
            else str(tokenizer_dir(version, cfg.data.tokenizer, cfg.model.vocab_size, cfg.data.sentinels))
        )
    return reference


def checkpoint_meta(
    cfg: Config, trainer: Trainer, step: int, skips: list[list[int]], eval_loss: float | None, reason: str
) -> dict[str, Any]:
    """The JSON record saved next to the train state: everything else a resume needs, and provenance."""
    return {
        "format": FORMAT_VERSION,
        "step": step,
        "reason": reason,
        "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        # Dropout keys are fold_in(key(train.seed), step) and batches are batch(data index): the
        # step, the seeds and the skipped data ranges are the whole RNG and data-loader state.
        "rng": {"seed": cfg.train.seed, "data_seed": cfg.data.seed},
        "data": {**data_reference(cfg), "skips": skips},
        "eval_loss": eval_loss,
        "mesh": {axis: int(size) for axis, size in trainer.mesh.shape.items()},
        "process_count": jax.process_count(),
        "config": to_dict(cfg),
    }


def path_name(path: tuple[Any, ...]) -> str:
    """A tree path as `opt_state.1.0.mu.embed`, the same for live states and orbax's metadata trees."""
    parts = []
    for key in path:
        attr = next((a for a in ("key", "name", "idx") if hasattr(key, a)), None)
        parts.append(str(getattr(key, attr)) if attr else str(key))
    return ".".join(parts)


def flat_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{dotted.path: (shape, dtype)} of a tree of arrays, ShapeDtypeStructs or orbax array metadata."""
    return {
        path_name(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key.path: (old, new)} for every config value that differs."""
    a, b = flatten(old), flatten(new)
    return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


def _shape_problems(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    problems = []
    for name in sorted(stored.keys() | wanted.keys()):
        if name not in wanted:
            problems.append(f"{name} is in the checkpoint but not in this model")
        elif name not in stored:
            problems.append(f"{name} is missing from the checkpoint")
        elif stored[name] != wanted[name]:
            problems.append(
                f"{name}: checkpoint {stored[name][0]} {stored[name][1]}, config {wanted[name][0]} {wanted[name][1]}"
            )
    return problems


def check_compatible(
    meta: dict[str, Any],
    stored: dict[str, Any],
    wanted: dict[str, Any],
    cfg: Config,
    where: Path,
    advice: str = RESUME_ADVICE,
) -> None:
    """Raise CheckpointError naming the config keys (and arrays) that make a checkpoint unusable for `cfg`."""
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {where} has format {meta.get('format')!r}, this scalelab reads {FORMAT_VERSION}; "
            "resume it with the scalelab version that wrote it, or start a new run"
        )
    changes = config_changes(meta["config"], to_dict(cfg))
    model_keys = [k for k in changes if k.startswith("model.") and k.split(".", 1)[1] not in RESUMABLE_MODEL_KEYS]
    problems = _shape_problems(stored, wanted)
    if not (model_keys or problems):
        return
    # Without a changed model key, the arrays differ because of another key (e.g. optimizer.clip_norm).
    culprits = model_keys or [k for k in changes if k.startswith(("model.", "optimizer."))]
    fields = "; ".join(f"{k}: checkpoint {changes[k][0]!r}, config {changes[k][1]!r}" for k in culprits)
    arrays = "; ".join(problems[:_SHOWN_PROBLEMS])
    if len(problems) > _SHOWN_PROBLEMS:
        arrays += f"; and {len(problems) - _SHOWN_PROBLEMS} more"
    detail = " | ".join(part for part in (fields, f"arrays: {arrays}" if arrays else "") if part)
    if advice == RESUME_ADVICE and any(problem.startswith("params") for problem in problems):
        advice = RESHAPED_ADVICE
    raise CheckpointError(f"checkpoint {where} does not fit this config ({detail}); {advice}")


def read_meta(step_dir: Path) -> dict[str, Any]:
    """The JSON record of one checkpoint."""
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        epath.Path(step_dir / "meta"), args=ocp.args.JsonRestore()
    )


def stored_shapes(step_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of the arrays in a checkpoint's train state, read from its metadata only."""
    return flat_shapes(ocp.PyTreeCheckpointHandler().metadata(epath.Path(step_dir / "state")).tree)
