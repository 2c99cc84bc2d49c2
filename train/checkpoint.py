"""Run checkpoints: asynchronous orbax saves sealed with a manifest, verified restores, compatibility checks.

Layout: `<run_dir>/checkpoints/<step>/` holds `state` (parameters and optimizer state, an orbax
StandardSave), `meta` (JSON: step, data position, RNG seed, resolved config, data and tokenizer
reference, mesh) and `scalelab_manifest.json`. A checkpoint whose manifest does not verify is
moved to `<run_dir>/checkpoints-corrupt/` and the one before it is used, with a warning naming
both. Orbax writes the arrays (on every host); only process 0 writes the manifest and moves files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from scalelab.model.config import ConfigError
from scalelab.train.config import Config, flatten_config, to_dict
from scalelab.train.manifest import verify_manifest, write_manifest
from scalelab.train.steps import TrainState
from scalelab.train.trainer import Trainer

CHECKPOINT_DIR = "checkpoints"
QUARANTINE_DIR = "checkpoints-corrupt"
FORMAT_VERSION = 1
# Model keys a resume may change: they affect speed, memory or regularisation, not what the weights mean.
RESUMABLE_MODEL_KEYS = frozenset({"dtype", "remat", "dropout"})
_SHOWN_PROBLEMS = 3
# How tensorstore (under orbax) reports the OS error behind a failed write, e.g. a full disk.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
RESUME_ADVICE = (
    "use the checkpoint's values, or start a new run in another --run-dir (with --init-from to start from its "
    "parameters)"
)


class CheckpointError(ConfigError):
    """A checkpoint cannot be used; the message names it and what to do instead."""


def warn(message: str, command: str = "train") -> None:
    """Print a warning of `scalelab <command>` to stderr, once (from process 0)."""
    if jax.process_index() == 0:
        print(f"scalelab {command}: warning: {message}", file=sys.stderr, flush=True)


def os_error_reason(error: BaseException | None) -> str | None:
    """The OS's reason ("No space left on device") behind a failed write, or None if it is another failure."""
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    match = _OS_ERROR_CODE.search(str(error)) if error is not None else None
    return os.strerror(int(match[1])) if match else None


class _ReportedWriteFailures(logging.Filter):
    """Drops orbax's and asyncio's records of a failed write: the store reports it as one CheckpointError."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return os_error_reason(error) is None and not _OS_ERROR_CODE.search(record.getMessage())


_REPORTED = _ReportedWriteFailures()


_previous_unraisablehook = sys.unraisablehook


def _quiet_unraisable(unraisable: Any) -> None:
    """Drop the errors orbax's writer threads leave behind after a failed write; report anything else."""
    error, owner = unraisable.exc_value, unraisable.object
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and owner is None
    orbax_coroutine = "/orbax/" in getattr(getattr(owner, "cr_code", None), "co_filename", "")
    if not (closed_loop or orbax_coroutine):
        _previous_unraisablehook(unraisable)


def quiet_write_failures() -> None:
    """Keep a failed checkpoint write (a full disk, say) to the one line its CheckpointError prints.

    Orbax's threads log the failure with tracebacks several times over, and tensorstore's callbacks
    then hit a closed event loop; the error itself still reaches the caller.
    """
    global _previous_unraisablehook
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_REPORTED)  # adding the same filter twice keeps one
    if sys.unraisablehook is not _quiet_unraisable:
        _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def saved_steps(root: Path) -> list[int]:
    """Steps of the committed checkpoints under `root` (orbax names each step folder by its number)."""
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


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
    a, b = flatten_config(old), flatten_config(new)
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
    raise CheckpointError(f"checkpoint {where} does not fit this config ({detail}); {advice}")


def read_meta(step_dir: Path) -> dict[str, Any]:
    """The JSON record of one checkpoint."""
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        epath.Path(step_dir / "meta"), args=ocp.args.JsonRestore()
    )


def stored_shapes(step_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of the arrays in a checkpoint's train state, read from its metadata only."""
    return flat_shapes(ocp.PyTreeCheckpointHandler().metadata(epath.Path(step_dir / "state")).tree)


@dataclasses.dataclass
class Restored:
    """A train state read back from a checkpoint, with its JSON record."""

    step: int
    state: TrainState
    meta: dict[str, Any]
    path: Path


class CheckpointStore:
    """One run's checkpoints: orbax saves sealed with a manifest, retention, and verified restores."""

    def __init__(self, run_dir: Path, cfg: Config, trainer: Trainer):
        self.root = (Path(run_dir) / CHECKPOINT_DIR).absolute()
        self.quarantine = (Path(run_dir) / QUARANTINE_DIR).absolute()
        self.cfg, self.trainer = cfg, trainer
        self._sealing: int | None = None  # the step whose save the seal callback finishes
        unfinished = sorted(p.name for p in self.root.glob("*.orbax-checkpoint-tmp*"))
        if unfinished:
            warn(f"discarding unfinished checkpoint saves in {self.root} (stopped mid-save): {', '.join(unfinished)}")
        self._manager: ocp.CheckpointManager | None = None  # created after corrupt checkpoints are moved away

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The orbax manager: keeps the newest `keep` (and the `keep_best` lowest eval loss) checkpoints."""
        if self._manager is None:
            ckpt = self.cfg.checkpoint
            policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=ckpt.keep)]
            if ckpt.keep_best:
                policies.append(
                    ocp.checkpoint_managers.BestN(
                        get_metric_fn=lambda metrics: metrics["eval_loss"],
                        reverse=True,  # sorted high to low and the last n kept: the lowest eval losses
                        n=ckpt.keep_best,
                        keep_checkpoints_without_metrics=False,
                    )
                )
            quiet_write_failures()
            self._manager = ocp.CheckpointManager(
                self.root,
                item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
                options=ocp.CheckpointManagerOptions(
                    create=True,
                    cleanup_tmp_directories=True,
                    preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                    async_options=ocp.AsyncOptions(post_finalization_callback=self._seal),
                ),
            )
        return self._manager

    def _quarantine_corrupt(self) -> list[tuple[int, str, Path]]:
        """Move every checkpoint newer than the newest intact one aside; return (step, problem, new place)."""
        bad = []
        for step in reversed(saved_steps(self.root)):
            path = self.root / str(step)
            problem = verify_manifest(path)
            if problem is None:
                break
            target = self.quarantine / str(step)
            suffix = 1
            while target.exists():
                target, suffix = self.quarantine / f"{step}-{suffix}", suffix + 1
            if jax.process_index() == 0:
                self.quarantine.mkdir(parents=True, exist_ok=True)
                shutil.move(path, target)
            bad.append((step, problem, target))
        _barrier("scalelab_checkpoint_quarantine")
        return bad

    def _seal(self) -> None:
        """Orbax callback, after the arrays are final and before the commit rename: write the manifest."""
        if jax.process_index() != 0:
            return
        step = self._sealing
        candidates = [*self.root.glob(f"{step}.orbax-checkpoint-tmp*"), self.root / str(step)]
        directory = next((p for p in candidates if p.is_dir()), None)
        if directory is None:
            raise RuntimeError(f"checkpoint of step {step} being saved is not under {self.root}")
        write_manifest(directory)

    def steps(self) -> list[int]:
        """Steps of this run's committed checkpoints."""
        return list(self.manager.all_steps())

    @contextlib.contextmanager
    def _reporting_write_failures(self) -> Iterator[None]:
        """Turn a save that the OS refused (a full disk, say) into a CheckpointError saying how to resume."""
        try:
            yield
        except Exception as error:
            reason = os_error_reason(error)
            if reason is None:
                raise
            done = saved_steps(self.root)
            resume = (
                f"the newest complete checkpoint is step {done[-1]}: free space and re-run the same command to resume"
                if done
                else "no checkpoint is complete: free space and re-run the same command with --overwrite to start over"
            )
            raise CheckpointError(
                f"saving checkpoint step {self._sealing} in {self.root} failed: {reason}; {resume}"
            ) from error

    def save(self, step: int, state: TrainState, meta: dict[str, Any], eval_loss: float | None, wait: bool) -> bool:
        """Save `state` as checkpoint `step` (in the background unless `wait` or async_save is off)."""
        if step in self.manager.all_steps():
            return False
        with self._reporting_write_failures():
            self.manager.wait_until_finished()  # the previous save's seal callback still reads self._sealing
            self._sealing = step
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                metrics=None if eval_loss is None else {"eval_loss": eval_loss},
                force=True,  # this module decides when to save; orbax only writes and prunes
            )
            if wait or not self.cfg.checkpoint.async_save:
                self.manager.wait_until_finished()
        return True

    def restore_latest(self) -> Restored | None:
        """The newest intact checkpoint restored onto this run's mesh, or None if the run has none."""
        if self._manager is not None:
            with self._reporting_write_failures():
                self._manager.wait_until_finished()
        bad = self._quarantine_corrupt()
        if bad and self._manager is not None:
            self._manager.reload()  # it still lists the steps just moved away
        steps = saved_steps(self.root)
        if not steps:
            if bad:
                raise CheckpointError(
                    f"every checkpoint in {self.root} is corrupt (moved to {self.quarantine}); "
                    f"the newest: step {bad[0][0]}: {bad[0][1]}. Re-run to start from step 0"
                )
            return None
        step = steps[-1]
        path = self.root / str(step)
        meta = read_meta(path)
        check_compatible(meta, stored_shapes(path), flat_shapes(self.trainer.abstract_state()), self.cfg, path)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(self.trainer.abstract_state()), meta=ocp.args.JsonRestore()
            ),
        )
        for bad_step, problem, moved in bad:
            warn(
                f"checkpoint step {bad_step} ({self.root / str(bad_step)}) is corrupt: {problem}; "
                f"moved it to {moved} and using step {step} ({path}) instead"
            )
        self._note_changes(meta, path)
        return Restored(step, restored["state"], restored["meta"], path)

    def _note_changes(self, meta: dict[str, Any], path: Path) -> None:
        changes = config_changes(meta["config"], to_dict(self.cfg))
        shown = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items() if not k.startswith("logging.")]
        if shown:
            warn(f"resuming from {path} with changed settings: {'; '.join(shown)}")

    def close(self) -> None:
        """Wait for the last save to be committed and release orbax's threads."""
        if self._manager is not None:
            with self._reporting_write_failures():
                self._manager.wait_until_finished()
            self._manager.close()


def refuse_unmanaged(run_dir: Path) -> None:
    """With checkpointing off, refuse a run directory that holds checkpoints rather than train past them."""
    steps = saved_steps(Path(run_dir) / CHECKPOINT_DIR)
    if steps:
        raise CheckpointError(
            f"{run_dir} holds checkpoints (newest: step {steps[-1]}) but checkpointing is off "
            "(checkpoint.every=0); resume them with --set checkpoint.every=N, or train in another --run-dir"
        )


def clear_checkpoints(run_dir: Path) -> None:
    """Delete a run's checkpoints (and the corrupt ones moved aside), so it starts over at step 0."""
    if jax.process_index() == 0:
        for name in (CHECKPOINT_DIR, QUARANTINE_DIR):
            if (Path(run_dir) / name).is_dir():
                shutil.rmtree(Path(run_dir) / name)
    _barrier("scalelab_clear_checkpoints")


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
    if not steps:
        raise CheckpointError(
            f"{flag} {source}: no checkpoints there; give a run directory, its checkpoints/ folder or one step folder"
        )
    for step in reversed(steps):
        problem = verify_manifest(root / str(step))
        if problem is None:
            return root / str(step)
        warn(f"{flag}: checkpoint {root / str(step)} is corrupt ({problem}); trying the one before it", command)
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
