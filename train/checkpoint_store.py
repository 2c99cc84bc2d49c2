"""A run's checkpoint store: asynchronous orbax saves sealed with a manifest, retention, verified restores.

Layout: `<run_dir>/checkpoints/<step>/` holds `state` (parameters and optimizer state, an orbax
StandardSave), `meta` (the JSON record of checkpoint_compat.py: step, data position, RNG seed,
resolved config, data and tokenizer reference, mesh) and `scalelab_manifest.json`. A checkpoint
whose manifest does not verify is moved to `<run_dir>/checkpoints-corrupt/` and the one before it
is used, with a warning naming both. Orbax writes the arrays (on every host); only process 0
writes the manifest and moves files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from scalelab.train.checkpoint_compat import (
    CheckpointError,
    check_compatible,
    config_changes,
    flat_shapes,
    read_meta,
    stored_shapes,
)
from scalelab.train.config import Config
from scalelab.train.config_io import to_dict
from scalelab.train.manifest import verify_manifest, write_manifest
from scalelab.train.steps import TrainState
from scalelab.train.trainer import Trainer

CHECKPOINT_DIR = "checkpoints"
QUARANTINE_DIR = "checkpoints-corrupt"
# How tensorstore (under orbax) reports the OS error behind a failed write, e.g. a full disk.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


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


def run_root(source: Path) -> Path | None:
    """The run directory `source` (a run directory, its checkpoints/ folder or one step folder) belongs to;
    None when that directory has no config.yaml."""
    source = Path(source)
    if source.name == CHECKPOINT_DIR:
        source = source.parent
    elif source.parent.name == CHECKPOINT_DIR:
        source = source.parent.parent
    return source if (source / "config.yaml").is_file() else None


def not_a_run(path: Path) -> str:
    """Why `path`, which has no config.yaml, is not a run directory: for errors that name it."""
    path = Path(path)
    if not path.exists():
        return "does not exist"
    return "is a file, not a directory" if not path.is_dir() else "has no config.yaml"


def saved_steps(root: Path) -> list[int]:
    """Steps of the committed checkpoints under `root` (orbax names each step folder by its number)."""
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


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
        """The orbax manager: keeps the newest `keep`, the `keep_best` lowest eval loss and the `at_steps` checkpoints."""
        if self._manager is None:
            ckpt = self.cfg.checkpoint
            policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=ckpt.keep)]
            if ckpt.at_steps:
                policies.append(ocp.checkpoint_managers.CustomSteps(steps=ckpt.at_steps))
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
        if continued_run(meta, self.cfg) is not None:
            return  # another run's checkpoint (a sweep's trunk, say): its settings are meant to differ
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


def continued_run(meta: dict[str, Any], cfg: Config) -> str | None:
    """The name of the run that wrote a checkpoint, when it is not `cfg`'s own: this run continues it."""
    name = meta["config"].get("name")
    return name if name != cfg.name else None


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
