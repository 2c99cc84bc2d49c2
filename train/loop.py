"""The training loop: `train()` starts or resumes a run, prints its summary and drives its steps and evaluations.

A session's metric lines are written by session_metrics.py and its checkpoint saves and rollbacks
decided by checkpoint_policy.py; callers import `train`, `RunResult` and `NonFiniteLossError` from here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
from tqdm import tqdm

from scalelab.data import BatchSource, make_source
from scalelab.data.objectives import model_lengths
from scalelab.model.counting import count_params, flops_per_token
from scalelab.parallel.distributed import check_same_config
from scalelab.runtime.peak import peak_flops_per_device
from scalelab.runtime.progress import progress_bar
from scalelab.train.checkpoint_compat import CheckpointError
from scalelab.train.checkpoint_params import load_params
from scalelab.train.checkpoint_policy import CheckpointPolicy
from scalelab.train.checkpoint_store import (
    CheckpointStore,
    Restored,
    clear_checkpoints,
    continued_run,
    refuse_unmanaged,
    warn,
)
from scalelab.train.config import Config
from scalelab.train.config_io import save_config
from scalelab.train.evaluation import evaluate_all
from scalelab.train.faults import DataSkips, Preempted, PreemptionGuard, RunDirLock, poison_batch, watch_for_lost_peers
from scalelab.train.faults import NonFiniteLossError as NonFiniteLossError  # callers catch it from here
from scalelab.train.metrics import clear_metrics, refuse_replacing
from scalelab.train.session_metrics import RollbackRequested, SessionMetrics
from scalelab.train.stage import stage_of
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


def _start_state(trainer: Trainer, init_from: Path | None) -> TrainState:
    """Step 0: fresh parameters, or those of another run (`--init-from`) with a fresh optimizer state."""
    if init_from is None:
        return trainer.init_state()
    stage = stage_of(trainer.cfg)
    if stage is None:
        params, _ = load_params(init_from, trainer.cfg, trainer)
    else:
        params = stage.init_params(trainer.cfg, trainer, init_from)
    opt_state = jax.jit(trainer.tx.init, out_shardings=trainer.state_shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), trainer.state_shardings["step"])
    return {"step": step, "params": params, "opt_state": opt_state}


class _Session:
    """One training session: the state and its data position, advanced step by step.

    Its metric lines are SessionMetrics' job and its saves and rollbacks CheckpointPolicy's; the
    session decides the order: metrics are written before the checkpoint that follows them.
    """

    def __init__(
        self,
        trainer: Trainer,
        source: BatchSource,
        metrics: SessionMetrics,
        checkpoints: CheckpointPolicy,
        progress: tqdm,
        start: tuple[TrainState, int, DataSkips],
    ):
        self.cfg, self.trainer, self.source = trainer.cfg, trainer, source
        self.metrics, self.checkpoints, self.progress = metrics, checkpoints, progress
        self.state, self.step, self.skips = start
        self.closed = False

    def run(self, guard: PreemptionGuard) -> None:
        """Train to train.steps; when `guard` reports a signal, save and raise Preempted."""
        while self.step < self.cfg.train.steps:  # a signal after the last step changes nothing
            if guard.requested():
                self._preempt(guard.signal_name or "a signal")
            try:
                self._advance()
            except RollbackRequested as bad:
                self._rollback(bad.step)

    def _advance(self) -> None:
        """One train step, then the metric flush, evaluation and checkpoint that are due."""
        cfg, step = self.cfg, self.step
        index = self.skips.data_index(step)
        batch = self.source.batch(index)
        if index in cfg.train.inject_nan_batches:
            batch = poison_batch(batch)
        self.state, metrics = self.trainer.train_step(self.state, self.trainer.put_batch(batch))
        self.metrics.add(step, index, metrics)
        self.step += 1
        self.progress.update(1)
        last = self.step == cfg.train.steps
        if self.metrics.due(last):
            self.metrics.flush()
        evaluated = bool(cfg.train.eval_every) and (self.step % cfg.train.eval_every == 0 or last)
        if evaluated:
            self.metrics.flush()
            results = evaluate_all(self.trainer, self.state["params"], self.source)
            self.metrics.record_eval(step, results.pop("eval_loss"), results)
        reason = self.checkpoints.save_reason(self.step, evaluated, last)
        if reason:
            self._checkpoint(reason, wait=last)

    def _checkpoint(self, reason: str, wait: bool) -> bool:
        """Save the current state (after flushing metrics, so they never lag the checkpoint); False if it exists."""
        self.metrics.flush()  # a non-finite step surfaces here, before its state could be saved
        self.metrics.make_durable()
        eval_loss = self.metrics.evals.get(self.step - 1)
        return self.checkpoints.save(self.step, self.state, self.skips, eval_loss, reason, wait)

    def _rollback(self, bad_step: int) -> None:
        """Go back to the newest checkpoint, past the data that led to the non-finite `bad_step`."""
        rollback = self.checkpoints.roll_back(bad_step, self.skips)
        self.state, self.step, self.skips = rollback.state, rollback.step, rollback.skips
        self.metrics.reopen(rollback.step)
        self.progress.n = rollback.step
        self.progress.refresh()
        warn(rollback.note)

    def _preempt(self, signal_name: str) -> None:
        """Save synchronously, close everything and raise Preempted."""
        if self.checkpoints.enabled:
            try:
                self._checkpoint("preempted", wait=True)
            except RollbackRequested as bad:
                self._rollback(bad.step)  # lands on a saved checkpoint: nothing newer to save
        else:
            self.metrics.flush()
        outcome = self.checkpoints.stopped_outcome()
        self.close()
        # A count, like "done: N steps": metrics number steps from 0, so they end at step N - 1, and the
        # checkpoint of step N (the state after N steps) resumes at step N.
        raise Preempted(f"stopped by {signal_name} after {self.step} steps; {outcome}", self.step)

    def close(self) -> None:
        """Wait for in-flight saves and close the metrics and progress bar (safe to call twice)."""
        self.progress.close()
        if not self.closed:
            self.checkpoints.close()
        self.metrics.close()
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
    with PreemptionGuard(cfg.posttrain.command, saves=cfg.checkpoint.enabled) as guard:
        check_same_config(cfg)  # before the processes first meet in a collective that the difference would hang
        with RunDirLock(Path(run_dir)), watch_for_lost_peers(Path(run_dir)):
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
    stage = stage_of(cfg)
    make = make_source if stage is None else stage.source
    source = make(cfg, *trainer.data_shard())  # only the rows this process's devices hold
    store = CheckpointStore(run_dir, cfg, trainer) if cfg.checkpoint.enabled else None
    restored = _restore(cfg, run_dir, store, existing)
    if restored is not None:
        start = (restored.state, restored.step, DataSkips.from_json(restored.meta["data"]["skips"]))
        origin = f"resuming from step {restored.step} ({restored.path})"
        continued = continued_run(restored.meta, cfg)
        if continued is not None:
            origin = f"continuing run {continued!r} from step {restored.step} ({restored.path})"
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
            print(f"scalelab {cfg.posttrain.command}: {cfg.name} -> {run_dir}" + (f"; {origin}" if origin else ""))
            print(summary(cfg, trainer, (peak, peak_source), compile_s, memory), flush=True)
    progress = progress_bar(
        total=cfg.train.steps,
        initial=start_step,
        desc=cfg.name,
        unit="step",
        disable=quiet or not cfg.logging.progress or not is_writer,
    )
    metrics = SessionMetrics(cfg, run_dir, progress, start_step, peak)
    checkpoints = CheckpointPolicy(trainer, store, lambda: _start_state(trainer, init_from))
    session = _Session(trainer, source, metrics, checkpoints, progress, start)
    try:
        session.run(guard)
    finally:
        session.close()
    evals = [metrics.evals[k] for k in sorted(metrics.evals)]
    return RunResult(
        run_dir,
        cfg.train.steps,
        metrics.final_loss,
        evals[-1] if evals else None,
        min(evals) if evals else None,
        session.state,
    )
