"""When a training session saves a checkpoint, and how it rolls back to one after a non-finite step."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from scalelab.train.checkpoint_compat import checkpoint_meta
from scalelab.train.checkpoint_store import CheckpointStore
from scalelab.train.faults import DataSkips, NonFiniteLossError
from scalelab.train.steps import TrainState
from scalelab.train.trainer import Trainer


@dataclasses.dataclass
class Rollback:
    """Where a rollback lands: the step and state to train on from, the data skips, and what to tell the user."""

    step: int
    state: TrainState
    skips: DataSkips
    note: str


class CheckpointPolicy:
    """A session's checkpoint decisions: the save cadence, the rollback budget, and what a stop leaves behind.

    With no store (checkpointing off) it never saves, and nan_policy=rollback cannot be configured.
    """

    def __init__(self, trainer: Trainer, store: CheckpointStore | None, fresh_state: Callable[[], TrainState]):
        self.cfg, self.trainer, self.store, self.fresh_state = trainer.cfg, trainer, store, fresh_state
        self.rollbacks = 0
        self.last_save = time.monotonic()

    @property
    def enabled(self) -> bool:
        """Whether this session writes checkpoints."""
        return self.store is not None

    def save_reason(self, step: int, evaluated: bool, last: bool) -> str | None:
        """Why the state after `step` steps should be saved now, or None."""
        ckpt = self.cfg.checkpoint
        if self.store is None:
            return None
        if last:
            return "final"
        if step in ckpt.at_steps:
            return "requested"
        if ckpt.every and step % ckpt.every == 0:
            return "interval"
        if evaluated and ckpt.keep_best:
            return "eval"
        if ckpt.every_minutes is not None and step % self.cfg.logging.log_every == 0:
            due = time.monotonic() - self.last_save >= 60.0 * ckpt.every_minutes
            if jax.process_count() > 1:  # clocks differ between hosts: process 0 decides for all
                due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
            if due:
                return "timer"
        return None

    def save(
        self, step: int, state: TrainState, skips: DataSkips, eval_loss: float | None, reason: str, wait: bool
    ) -> bool:
        """Save the state after `step` steps with its JSON record; False if that checkpoint exists."""
        assert self.store is not None
        meta = checkpoint_meta(self.cfg, self.trainer, step, skips.to_json(), eval_loss, reason)
        saved = self.store.save(step, state, meta, eval_loss, wait)
        self.last_save = time.monotonic()
        return saved

    def roll_back(self, bad_step: int, skips: DataSkips) -> Rollback:
        """Restore the newest checkpoint and skip every data batch from there through the bad one.

        Raises NonFiniteLossError once train.max_rollbacks rollbacks have not helped.
        """
        assert self.store is not None
        bad_index = skips.data_index(bad_step)
        self.rollbacks += 1
        limit = self.cfg.train.max_rollbacks
        if self.rollbacks > limit:
            raise NonFiniteLossError(
                f"step {bad_step} (data batch {bad_index}): loss is not finite after "
                f"{limit} rollbacks (train.max_rollbacks); lower optimizer.lr or enable clipping"
            )
        restored = self.store.restore_latest()
        target, state = (restored.step, restored.state) if restored else (0, self.fresh_state())
        skips = skips.after_rollback(target, bad_step)
        skipped = skips.entries[-1][1]
        note = (
            f"step {bad_step}: non-finite loss (train.nan_policy=rollback); rolled back to "
            f"{f'checkpoint step {target}' if restored else 'the initial state'} and skipping data batches "
            f"{bad_index + 1 - skipped}..{bad_index} (rollback {self.rollbacks} of at most {limit})"
        )
        return Rollback(target, state, skips, note)

    def stopped_outcome(self) -> str:
        """What a run stopped by a signal leaves to resume from, for its last message."""
        if self.store is None:
            return (
                "checkpointing is off (checkpoint.every=0), so nothing was saved; re-run with --overwrite to start over"
            )
        latest = max(self.store.steps(), default=None)
        return f"newest checkpoint: step {latest} in {self.store.root}; re-run the same command to resume"

    def close(self) -> None:
        """Wait for in-flight saves to be committed."""
        if self.store is not None:
            self.store.close()
