"""The training loop: steps, periodic evaluation, metrics, progress and the start-up summary."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from scalelab.data import BatchSource, make_source
from scalelab.data.objectives import model_lengths
from scalelab.model.counting import count_params, flops_per_token
from scalelab.parallel.distributed import check_same_config
from scalelab.runtime.peak import peak_flops_per_device
from scalelab.train.checkpoint import (
    CheckpointError,
    CheckpointStore,
    Restored,
    checkpoint_meta,
    clear_checkpoints,
    load_params,
    refuse_unmanaged,
    warn,
)
from scalelab.train.config import Config, save_config
from scalelab.train.faults import DataSkips, NonFiniteLossError, Preempted, PreemptionGuard, RunDirLock, poison_batch
from scalelab.train.metrics import MetricsWriter, clear_metrics, refuse_replacing, truncate_metrics
from scalelab.train.steps import TrainState
from scalelab.train.trainer import Trainer, device_bytes
from scalelab.units import si


@dataclasses.dataclass
class RunResult:
    """What a finished run reports back to its caller (the CLI or a sweep)."""

    run_dir: Path
    steps: int
    final_loss: float
    eval_loss: float | None
    best_eval_loss: float | None
    state: TrainState


def summary(cfg: Config, trainer: Trainer, peak: tuple[float, str], compile_s: float, memory: dict[str, int]) -> str:
    """The one-screen description printed when a run starts."""
    counts = count_params(cfg.model)
    fpt = flops_per_token(cfg.model, cfg.train.seq_len, model_lengths(cfg))
    m, t = cfg.model, cfg.train
    device = jax.devices()[0]
    mesh = " x ".join(f"{axis}={size}" for axis, size in trainer.mesh.shape.items() if size > 1) or "single device"
    tokens_per_step = t.batch_size * t.seq_len
    per_device = device_bytes(memory)
    lines = [
        f"model    {m.family}: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, vocab {m.vocab_size}, "
        f"{m.position} positions, {m.activation}, {m.norm}, {m.dtype}",
        f"params   {si(counts.total)} total, {si(counts.non_embedding)} non-embedding",
        f"flops    {si(fpt)} per token, {si(fpt * tokens_per_step)} per step (training)",
        f"data     {cfg.data.source}: batch {t.batch_size} x {t.seq_len} = {tokens_per_step} tokens/step, {t.steps} steps",
        f"devices  {jax.device_count()} x {device.platform} ({device.device_kind}), {jax.process_count()} process(es); "
        f"mesh {mesh}",
        *([f"pipeline {trainer.pipeline.describe()}"] if trainer.pipeline else []),
        f"memory   {si(per_device, 'B')} per device (arguments {si(memory.get('argument', 0), 'B')}, "
        f"temporaries {si(memory.get('temp', 0), 'B')}); compiled in {compile_s:.1f}s",
        f"peak     {si(peak[0], 'FLOP/s')} per device ({peak[1]})",
    ]
    return "\n".join(lines)


def evaluate(trainer: Trainer, params: Any, source: BatchSource) -> float:
    """Mean validation loss over the configured number of fixed eval batches."""
    loss_sum, weight_sum = 0.0, 0.0
    for index in range(trainer.cfg.train.eval_batches):
        sums = trainer.eval_step(params, trainer.put_batch(source.eval_batch(index)))
        loss_sum += float(sums["loss_sum"])
        weight_sum += float(sums["weight_sum"])
    return loss_sum / max(weight_sum, 1.0)


class _Rollback(Exception):
    """A non-finite step under nan_policy=rollback: undo it by restoring the last checkpoint."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def _start_state(trainer: Trainer, init_from: Path | None) -> TrainState:
    """Step 0: fresh parameters, or those of another run (`--init-from`) with a fresh optimizer state."""
    if init_from is None:
        return trainer.init_state()
    params, _ = load_params(init_from, trainer.cfg, trainer)
    opt_state = jax.jit(trainer.tx.init, out_shardings=trainer.state_shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), trainer.state_shardings["step"])
    return {"step": step, "params": params, "opt_state": opt_state}


class _Session:
    """One training session: the state, its position, buffered metrics and the checkpoint cadence."""

    def __init__(
        self,
        trainer: Trainer,
        source: BatchSource,
        store: CheckpointStore | None,
        run_dir: Path,
        progress: tqdm,
        start: tuple[TrainState, int, DataSkips],
        fresh_state: Callable[[], TrainState],
    ):
        self.cfg, self.trainer, self.source, self.store, self.run_dir = trainer.cfg, trainer, source, store, run_dir
        self.progress, self.fresh_state = progress, fresh_state
        self.state, self.step, self.skips = start
        self.is_writer = jax.process_index() == 0  # one writer for files shared by all processes
        self.pending: list[tuple[int, int, dict[str, jax.Array]]] = []
        self.rollbacks = 0
        self.closed = False
        self.last_save = time.monotonic()
        self.last_flush = time.perf_counter()
        self.writer: MetricsWriter | None = None
        self._reopen_metrics(self.step)
        tokens_per_step = self.cfg.train.batch_size * self.cfg.train.seq_len
        self.tokens_per_step = tokens_per_step
        lengths = model_lengths(self.cfg)  # what each row puts through the model under its objective
        self.flops_per_step = flops_per_token(self.cfg.model, self.cfg.train.seq_len, lengths) * tokens_per_step
        self.total_peak = (
            peak_flops_per_device(self.cfg.logging.peak_flops, self.cfg.model.dtype)[0] * jax.device_count()
        )

    def _reopen_metrics(self, step: int) -> None:
        """Drop metric lines of steps >= `step` (they are about to be replayed) and append after the rest."""
        if self.writer is not None:
            self.writer.close()
        history = truncate_metrics(self.run_dir, step, rewrite=self.is_writer)
        self.evals = {r["step"]: r["eval_loss"] for r in history if "eval_loss" in r}
        self.final_loss = next((r["loss"] for r in reversed(history) if "loss" in r), float("nan"))
        if self.is_writer:
            self.writer = MetricsWriter(
                self.run_dir, tensorboard=self.cfg.logging.tensorboard, purge_step=step if step else None
            )

    def run(self, guard: PreemptionGuard) -> None:
        """Train to train.steps; when `guard` reports a signal, save and raise Preempted."""
        while self.step < self.cfg.train.steps:  # a signal after the last step changes nothing
            if guard.requested(self.step):
                self._preempt(guard.signal_name or "a signal")
            try:
                self._advance()
            except _Rollback as bad:
                self._rollback(bad.step)

    def _advance(self) -> None:
        """One train step, then the metric flush, evaluation and checkpoint that are due."""
        cfg, step = self.cfg, self.step
        index = self.skips.data_index(step)
        batch = self.source.batch(index)
        if index in cfg.train.inject_nan_batches:
            batch = poison_batch(batch)
        self.state, metrics = self.trainer.train_step(self.state, self.trainer.put_batch(batch))
        self.pending.append((step, index, metrics))
        self.step += 1
        self.progress.update(1)
        last = self.step == cfg.train.steps
        if len(self.pending) >= cfg.logging.log_every or last:
            self._flush()
        evaluated = bool(cfg.train.eval_every) and (self.step % cfg.train.eval_every == 0 or last)
        if evaluated:
            self._flush()
            self._evaluate(step)
        reason = self._save_reason(evaluated, last)
        if reason:
            self._checkpoint(reason, wait=last)

    def _flush(self) -> None:
        """Fetch buffered step metrics, apply the NaN policy and write them."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        fetched = jax.device_get([m for *_, m in pending])
        now = time.perf_counter()
        step_time = (now - self.last_flush) / len(pending)
        self.last_flush = now
        policy = self.cfg.train.nan_policy
        for (step, index, _), metrics in zip(pending, fetched, strict=True):
            record = {k: float(v) for k, v in metrics.items() if k != "finite"}
            finite = bool(metrics["finite"])
            if not finite and policy == "stop":
                raise NonFiniteLossError(
                    f"step {step} (data batch {index}): loss {record['loss']} / grad norm {record['grad_norm']} is "
                    "not finite (train.nan_policy=stop); lower optimizer.lr, enable clipping, or set "
                    "train.nan_policy to skip or rollback"
                )
            if not finite and policy == "rollback":
                raise _Rollback(step)
            self.final_loss = record["loss"]
            record.update(
                step=step,
                data_index=index,
                step_time_s=step_time,
                tokens_per_s=self.tokens_per_step / step_time,
                mfu=self.flops_per_step / step_time / self.total_peak,
                skipped=not finite,
            )
            if self.writer is not None:
                self.writer.write(record)
        self.progress.set_postfix(loss=f"{self.final_loss:.3f}", refresh=False)

    def _evaluate(self, step: int) -> None:
        eval_loss = evaluate(self.trainer, self.state["params"], self.source)
        self.evals[step] = eval_loss
        if self.writer is not None:
            self.writer.write({"step": step, "eval_loss": eval_loss})
            self.writer.flush()
        self.progress.set_postfix(loss=f"{self.final_loss:.3f}", eval=f"{eval_loss:.3f}")
        self.last_flush = time.perf_counter()  # evaluation time is not training step time

    def _save_reason(self, evaluated: bool, last: bool) -> str | None:
        """Why the state after this step should be saved now, or None."""
        ckpt = self.cfg.checkpoint
        if self.store is None:
            return None
        if last:
            return "final"
        if ckpt.every and self.step % ckpt.every == 0:
            return "interval"
        if evaluated and ckpt.keep_best:
            return "eval"
        if ckpt.every_minutes is not None and self.step % self.cfg.logging.log_every == 0:
            due = time.monotonic() - self.last_save >= 60.0 * ckpt.every_minutes
            if jax.process_count() > 1:  # clocks differ between hosts: process 0 decides for all
                due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
            if due:
                return "timer"
        return None

    def _checkpoint(self, reason: str, wait: bool) -> bool:
        """Save the current state (after flushing metrics, so they never lag the checkpoint); False if it exists."""
        assert self.store is not None
        self._flush()  # a non-finite step surfaces here, before its state could be saved
        if self.writer is not None:
            self.writer.flush(durable=True)
        eval_loss = self.evals.get(self.step - 1)
        meta = checkpoint_meta(self.cfg, self.trainer, self.step, self.skips.to_json(), eval_loss, reason)
        saved = self.store.save(self.step, self.state, meta, eval_loss, wait)
        self.last_save = time.monotonic()
        return saved

    def _rollback(self, bad_step: int) -> None:
        """Restore the newest checkpoint and skip every data batch from there through the bad one."""
        assert self.store is not None
        bad_index = self.skips.data_index(bad_step)
        self.rollbacks += 1
        if self.rollbacks > self.cfg.train.max_rollbacks:
            raise NonFiniteLossError(
                f"step {bad_step} (data batch {bad_index}): loss is not finite after "
                f"{self.cfg.train.max_rollbacks} rollbacks (train.max_rollbacks); lower optimizer.lr or enable clipping"
            )
        restored = self.store.restore_latest()
        target, state = (restored.step, restored.state) if restored else (0, self.fresh_state())
        self.skips = self.skips.after_rollback(target, bad_step)
        skipped = self.skips.entries[-1][1]
        self.state, self.step = state, target
        self._reopen_metrics(target)
        self.progress.n = target
        self.progress.refresh()
        warn(
            f"step {bad_step}: non-finite loss (train.nan_policy=rollback); rolled back to "
            f"{f'checkpoint step {target}' if restored else 'the initial state'} and skipping data batches "
            f"{bad_index + 1 - skipped}..{bad_index} (rollback {self.rollbacks} of at most {self.cfg.train.max_rollbacks})"
        )

    def _preempt(self, signal_name: str) -> None:
        """Save synchronously, close everything and raise Preempted."""
        if self.store is not None:
            try:
                self._checkpoint("preempted", wait=True)
            except _Rollback as bad:
                self._rollback(bad.step)  # lands on a saved checkpoint: nothing newer to save
            latest = max(self.store.steps(), default=None)
            outcome = f"newest checkpoint: step {latest} in {self.store.root}; re-run the same command to resume"
        else:
            self._flush()
            outcome = "checkpointing is off (checkpoint.every=0), so nothing was saved; a re-run starts over"
        self.close()
        # A count, like "done: N steps": metrics number steps from 0, so they end at step N - 1, and the
        # checkpoint of step N (the state after N steps) resumes at step N.
        raise Preempted(f"stopped by {signal_name} after {self.step} steps; {outcome}", self.step)

    def close(self) -> None:
        """Wait for in-flight saves and close the metrics and progress bar (safe to call twice)."""
        self.progress.close()
        if self.store is not None and not self.closed:
            self.store.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.closed = True


# What `train` does with a run directory that no checkpoint resumes: start over silently (sweeps own
# their run directories), refuse when its metrics hold a run (the CLI), or delete that run first.
Existing = Literal["restart", "refuse", "overwrite"]


def train(
    cfg: Config,
    run_dir: Path,
    quiet: bool = False,
    init_from: Path | None = None,
    existing: Existing = "restart",
) -> RunResult:
    """Train `cfg` in `run_dir`, resuming from its newest intact checkpoint if it has one.

    Writes config.yaml, metrics.jsonl, TensorBoard events and (if enabled) checkpoints/.
    `init_from` (a run directory or checkpoint) seeds the parameters of a new run. Without a
    checkpoint to resume, `existing` says whether an earlier run's metrics may be replaced
    ("restart"), stop the run ("refuse"), or are deleted with its checkpoints first ("overwrite").
    Raises Preempted after saving when SIGTERM or SIGINT arrives, also during start-up and compilation.
    Raises ConfigError when another trainer holds `run_dir`, or when the processes of a multi-process
    run were given different configs.
    """
    with PreemptionGuard() as guard:
        check_same_config(cfg)  # before the processes first meet in a collective that the difference would hang
        with RunDirLock(Path(run_dir)):
            return _train(cfg, Path(run_dir), quiet, init_from, existing, guard)


def _restore(cfg: Config, run_dir: Path, store: CheckpointStore | None, existing: Existing) -> Restored | None:
    """The checkpoint to resume from, or None to start at step 0 in a run directory cleared of older metrics."""
    is_writer = jax.process_index() == 0
    if existing == "overwrite":
        if is_writer:
            clear_metrics(run_dir)
        clear_checkpoints(run_dir)
    if store is None:
        refuse_unmanaged(run_dir)
    restored = store.restore_latest() if store is not None else None
    if restored is not None and restored.step > cfg.train.steps:
        raise CheckpointError(
            f"{run_dir} holds a checkpoint at step {restored.step}, past train.steps={cfg.train.steps}; set "
            f"train.steps to at least {restored.step} to continue it, or start a new run in another --run-dir "
            f"(--init-from {run_dir} starts from its parameters)"
        )
    if restored is None:
        if existing == "refuse":
            refuse_replacing(run_dir)
        if is_writer:  # the old events would mix with this run's in TensorBoard
            clear_metrics(run_dir)
    return restored


def _train(
    cfg: Config, run_dir: Path, quiet: bool, init_from: Path | None, existing: Existing, guard: PreemptionGuard
) -> RunResult:
    """The body of `train`, under its signal guard."""
    is_writer = jax.process_index() == 0  # one writer for files shared by all processes
    trainer = Trainer.build(cfg)
    source = make_source(cfg, *trainer.data_shard())  # only the rows this process's devices hold
    store = CheckpointStore(run_dir, cfg, trainer) if cfg.checkpoint.enabled else None
    restored = _restore(cfg, run_dir, store, existing)
    if restored is not None:
        start = (restored.state, restored.step, DataSkips.from_json(restored.meta["data"]["skips"]))
        origin = f"resuming from step {restored.step} ({restored.path})"
        if init_from is not None:
            origin += "; --init-from only seeds a new run, so it is ignored"
    else:
        start = (_start_state(trainer, init_from), 0, DataSkips())
        origin = "" if init_from is None else f"starting from the parameters in {init_from} (fresh optimizer, step 0)"
    start_step = start[1]

    first_batch = source.batch(start[2].data_index(min(start_step, cfg.train.steps - 1)))
    compile_s, memory = trainer.compile(start[0], trainer.put_batch(first_batch))
    peak, peak_source = peak_flops_per_device(cfg.logging.peak_flops, cfg.model.dtype)
    if is_writer:
        save_config(cfg, run_dir / "config.yaml")
        if not quiet:
            print(f"scalelab train: {cfg.name} -> {run_dir}" + (f"; {origin}" if origin else ""))
            print(summary(cfg, trainer, (peak, peak_source), compile_s, memory), flush=True)
    progress = tqdm(
        total=cfg.train.steps,
        initial=start_step,
        desc=cfg.name,
        unit="step",
        disable=quiet or not cfg.logging.progress or not is_writer,
        dynamic_ncols=True,
    )
    session = _Session(trainer, source, store, run_dir, progress, start, lambda: _start_state(trainer, init_from))
    try:
        session.run(guard)
    finally:
        session.close()
    evals = [session.evals[k] for k in sorted(session.evals)]
    return RunResult(
        run_dir,
        cfg.train.steps,
        session.final_loss,
        evals[-1] if evals else None,
        min(evals) if evals else None,
        session.state,
    )
