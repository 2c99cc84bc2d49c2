"""Faults a run survives: preemption signals, a second trainer on its run directory, skipped data
after a NaN rollback, and NaN injection.

Exit status contract (sweep runners rely on it): a run stopped by SIGTERM or SIGINT saves a
checkpoint, prints what it did and exits with EXIT_PREEMPTED (75, EX_TEMPFAIL: "try again");
re-running the same command resumes it. A second signal exits at once with 128 + the signal
number, without saving (the same signal within ECHO_S of the first is that one delivered twice). A run whose loss turned non-finite under nan_policy=stop exits with
EXIT_DIVERGED (3): re-running it as it is would diverge again. When a process of a multi-process
run dies (killed, its host lost), every other process stops within seconds (SCALELAB_PEER_TIMEOUT,
10 s by default) with one line naming the lost process and its host, and exits with EXIT_PEER_LOST
(75, the same "try again" as a preemption): requeueing the whole job with the same command resumes
it from its newest checkpoint, bitwise as if nothing had happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from scalelab.model.config import ConfigError
from scalelab.parallel.liveness import LostPeer, watch_peers

EXIT_PREEMPTED = 75
EXIT_DIVERGED = 3
EXIT_PEER_LOST = EXIT_PREEMPTED  # retryable: the survivors' state is intact on disk, only the job needs restarting
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The same signal again within this many seconds is the same notice, not a second one: a scheduler
# that signals every process of a job reaches a supervised child (parallel/supervisor.py) both
# directly and through its supervisor, a few milliseconds apart. A person repeating Ctrl-C is slower.
ECHO_S = 0.5


# Before a guard is up, Ctrl-C raises KeyboardInterrupt, and Python drops an exception raised in a
# garbage-collector callback (JAX registers one) with an "Exception ignored" traceback: the command
# would run on. The CLI's own SIGINT handler notes the signal too, so the first guard entered stops
# the run, and that dropped KeyboardInterrupt is not printed.
_interrupted_early = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _interrupted_early
    _interrupted_early = True
    raise KeyboardInterrupt


def note_early_interrupts() -> Callable[[], None]:
    """Install the start-up SIGINT handler (in the main thread); return a function that puts back what it replaced."""
    global _interrupted_early
    _interrupted_early = False
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous_handler, previous_hook = signal.signal(signal.SIGINT, _interrupt), sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not (_interrupted_early and unraisable.exc_type is KeyboardInterrupt):
            previous_hook(unraisable)

    def restore() -> None:
        signal.signal(signal.SIGINT, previous_handler)
        sys.unraisablehook = previous_hook

    sys.unraisablehook = hook
    return restore


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss or gradient under nan_policy=stop."""


class Preempted(BaseException):
    """The run stopped on SIGTERM/SIGINT after saving (or, with checkpointing off, without saving).

    Like KeyboardInterrupt it is not an Exception, so `except Exception` (a sweep's per-run error
    handling, say) cannot swallow a request to stop.
    """

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class PreemptionGuard:
    """Turns the first SIGTERM/SIGINT into a request to save and stop; the second one exits at once.

    Handlers are installed only in the main thread. With several processes, JAX's preemption
    service owns SIGTERM and picks a step that every process reaches, so all of them save the
    same checkpoint; it ignores SIGINT, so the guard forwards a first SIGINT to it as SIGTERM.

    A guard entered while another is active yields that outer guard: a sweep holds one across its
    runs, so a signal that lands after a run's last step (or between runs) still stops the sweep.
    """

    _active: PreemptionGuard | None = None  # the outermost guard entered in this process
    # Calls to the preemption service's sync point in this process. The service stops every process
    # at the call after the fastest one's count when the notice came, so the count must only rise:
    # a run's own step starts again at 0 (or at a resumed step) in the next run of a sweep, and a
    # notice that came after a run's last step would then be matched mid-run much later, or never.
    _sync_calls = 0

    def __init__(self, command: str = "train", saves: bool = True) -> None:
        self.command = command  # the `scalelab COMMAND` its notices name
        self.saves = saves  # whether stopping saves a checkpoint (a run with checkpointing off has nothing to save)
        self.signal_name: str | None = None
        self._first: tuple[int, float] | None = None  # the first signal and when it came
        self._previous: dict[int, Any] = {}
        self._nested = False

    def __enter__(self) -> PreemptionGuard:
        import jax  # here, not at the top: the CLI imports this module for EXIT_PREEMPTED without JAX

        if PreemptionGuard._active is not None:
            self._nested = True
            return PreemptionGuard._active
        if threading.current_thread() is threading.main_thread():
            handler = self._handle if jax.process_count() == 1 else self._forward
            for signum in _SIGNALS if jax.process_count() == 1 else (signal.SIGINT,):
                self._previous[signum] = signal.signal(signum, handler)
            PreemptionGuard._active = self
            global _interrupted_early
            if _interrupted_early:  # a Ctrl-C during start-up whose KeyboardInterrupt was dropped
                _interrupted_early = False
                handler(signal.SIGINT, None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._nested:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if PreemptionGuard._active is self:
            PreemptionGuard._active = None

    def _handle(self, signum: int, frame: FrameType | None) -> bool:
        """Note a signal; False when it repeats the first one (an echo), and a true second one exits."""
        name, now = signal.Signals(signum).name, time.monotonic()
        if self.signal_name is not None:
            if self._first is not None and self._first[0] == signum and now - self._first[1] < ECHO_S:
                return False
            os.write(2, f"\nscalelab {self.command}: second signal ({name}): exiting now without saving\n".encode())
            os._exit(128 + signum)
        self._first, self.signal_name = (signum, now), name
        # os.write, not print: a handler may interrupt a print already in progress.
        action = (
            "saving a checkpoint and stopping" if self.saves else "stopping (checkpointing is off: nothing to save)"
        )
        notice = f"\nscalelab {self.command}: {name}: {action}; send it again to exit now\n"
        os.write(2, notice.encode())
        return True

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        """Multi-process SIGINT: hand it to the preemption service as SIGTERM, so every process stops together."""
        if self._handle(signum, frame):
            os.kill(os.getpid(), signal.SIGTERM)

    def signalled_anywhere(self) -> bool:
        """Whether any process has had a signal (a collective with several): for a point between runs.

        With several processes a SIGTERM goes to the preemption service, not to this guard, so the
        service's sync point is asked too: a notice that came after a run's last step stops here.
        """
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() == 1:
            return self.signal_name is not None
        reached = self._reached_sync_point()
        flags = multihost_utils.process_allgather(np.asarray(self.signal_name is not None))
        return reached or bool(np.any(flags))

    def requested(self) -> bool:
        """Whether the run should save and stop now (after each step: a sync point every process must call)."""
        import jax

        if jax.process_count() == 1:
            return self.signal_name is not None
        return self._reached_sync_point()

    def _reached_sync_point(self) -> bool:
        """The preemption service's verdict at this process's next sync call; False with the service off."""
        from jax.experimental import multihost_utils

        PreemptionGuard._sync_calls += 1
        try:
            reached = multihost_utils.reached_preemption_sync_point(PreemptionGuard._sync_calls)
        except RuntimeError:  # the preemption service is off: nothing can request a stop
            return False
        if reached and self.signal_name is None:  # a process that got no signal itself
            self.signal_name = "preemption notice"
        return reached


LOCK_FILE = ".lock"


def lock_run_dir(run_dir: Path) -> int | None:
    """Lock `run_dir` for this trainer: the lock file's descriptor, or None where the file system has no locks.

    The lock (flock on <run_dir>/.lock) lasts until the descriptor is closed, which the OS does
    when the process dies, so a killed run never leaves it behind. A second trainer on the same
    directory (a requeued job while the old one drains, a shard launched twice) would corrupt
    the first one's checkpoints and metrics, so it is refused with the holder's PID and host.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.read(fd, 1024).decode(errors="replace").strip()
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None  # e.g. a network file system without locks: run unguarded rather than not at all
        raise ConfigError(
            f"run dir {run_dir} is in use by {holder or 'another trainer'}; wait for it to finish or stop it"
        ) from None
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    os.ftruncate(fd, 0)
    os.write(fd, f"PID {os.getpid()} on {socket.gethostname()} (started {started})\n".encode())
    return fd


def lock_holder(run_dir: Path) -> str | None:
    """Who holds `run_dir`'s lock now ("PID 12 on host (started ...)"), or None; looks without locking it."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None  # no locks on this file system: nothing to tell
        return os.read(fd, 1024).decode(errors="replace").strip() or "another trainer"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunDirLock:
    """Holds `lock_run_dir` for a run: process 0 locks, and every process stops if that fails."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> RunDirLock:
        import jax
        from jax.experimental import multihost_utils

        refused: ConfigError | None = None
        if jax.process_index() == 0:  # several processes of one job may share a host, and the lock
            self._created = not self.run_dir.exists()
            try:
                self._fd = lock_run_dir(self.run_dir)
            except ConfigError as error:
                refused = error
        if jax.process_count() > 1:  # the others would otherwise wait for process 0 until a timeout
            locked = bool(multihost_utils.broadcast_one_to_all(np.asarray(refused is None)))
            if not locked and refused is None:
                refused = ConfigError(f"run dir {self.run_dir} is in use by another trainer (see process 0's error)")
        if refused is not None:
            raise refused
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._fd is None:
            return
        # A run that failed before writing anything (a bad --init-from, a config refused at start-up)
        # leaves no directory behind that holds only its lock, if the lock made that directory.
        abandoned = exc_type is not None and self._created and [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]
        if abandoned:
            (self.run_dir / LOCK_FILE).unlink()
        os.close(self._fd)  # closing releases the lock
        self._fd = None
        if abandoned:
            self.run_dir.rmdir()


def lost_peer_message(lost: LostPeer, run_dir: Path) -> str:
    """The one line a survivor prints when `lost` stopped responding: who, and how to carry on."""
    from scalelab.train.checkpoint_store import CHECKPOINT_DIR, saved_steps  # JAX and orbax: not at import time

    steps = saved_steps(run_dir / CHECKPOINT_DIR)
    resume = (
        f"it resumes from checkpoint {steps[-1]}"
        if steps
        else "no checkpoint was saved yet, so add --overwrite to start it over"
    )
    return peer_lost_line(lost, resume)


def peer_lost_line(lost: LostPeer, resume: str, command: str = "train") -> str:
    """The survivors' line for `scalelab COMMAND`: who stopped responding, and what a requeue resumes."""
    return (
        f"scalelab {command}: error: process {lost.process} (host {lost.host}) stopped responding; the job cannot "
        f"continue without it. Requeue the whole job with the same command: {resume}"
    )


def _stop_for_lost_peer(lost: LostPeer, run_dir: Path) -> None:
    """Print the line and end this process at once: its main thread may wait in a collective forever."""
    try:
        line = lost_peer_message(lost, run_dir)
    except Exception:  # the run directory unreadable: still name the process, never hang instead
        line = (
            f"scalelab train: error: process {lost.process} (host {lost.host}) stopped responding; the job cannot "
            "continue without it. Requeue the whole job with the same command"
        )
    os.write(2, f"\n{line}\n".encode())
    os._exit(EXIT_PEER_LOST)


def watch_for_lost_peers(run_dir: Path) -> contextlib.AbstractContextManager[object]:
    """While a multi-process run trains in `run_dir`, stop this process with EXIT_PEER_LOST if another one dies."""
    return watch_peers(lambda lost: _stop_for_lost_peer(lost, run_dir))


@dataclasses.dataclass
class DataSkips:
    """Data batches jumped over after NaN rollbacks, so step t trains on batch data_index(t).

    Each entry (at, count) means: from step `at` on, the data index runs `count` further ahead.
    Without rollbacks the data index equals the step.
    """

    entries: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_json(cls, data: list[list[int]]) -> DataSkips:
        """Read the `data.skips` list of a checkpoint's JSON record."""
        return cls([(int(at), int(count)) for at, count in data])

    def to_json(self) -> list[list[int]]:
        """The `data.skips` list for a checkpoint's JSON record."""
        return [[at, count] for at, count in self.entries]

    def data_index(self, step: int) -> int:
        """The data batch that step `step` trains on."""
        return step + sum(count for at, count in self.entries if at <= step)

    def after_rollback(self, target: int, bad_step: int) -> DataSkips:
        """The skips after rolling back to step `target` from a non-finite `bad_step`.

        Every batch from the one `target` would have used through the bad one is skipped, as
        PaLM does after a loss spike: the bad batch and the ones that led into it.
        """
        kept = [(at, count) for at, count in self.entries if at <= target]
        resume_index = DataSkips(kept).data_index(target)
        skipped = self.data_index(bad_step) + 1 - resume_index
        return DataSkips([*kept, (target, skipped)])


def poison_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of `batch` whose loss weights are NaN, so its loss and gradients are NaN (train.inject_nan_batches)."""
    return {**batch, "weights": np.full_like(batch["weights"], np.nan)}
