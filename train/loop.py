"""The training loop: steps, periodic evaluation, metrics, progress and the start-up summary."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
from tqdm import tqdm

from model.counting import count_params, flops_per_token
from train.config import Config, save_config
from train.data import BatchSource, make_source
from train.metrics import MetricsWriter
from train.peak import peak_flops_per_device
from train.steps import TrainState
from train.trainer import Trainer, device_bytes


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss or gradient under nan_policy=stop."""


@dataclasses.dataclass
class RunResult:
    """What a finished run reports back to its caller (the CLI or a sweep)."""

    run_dir: Path
    steps: int
    final_loss: float
    eval_loss: float | None
    best_eval_loss: float | None
    state: TrainState


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def summary(cfg: Config, trainer: Trainer, peak: tuple[float, str], compile_s: float, memory: dict[str, int]) -> str:
    """The one-screen description printed when a run starts."""
    counts = count_params(cfg.model)
    fpt = flops_per_token(cfg.model, cfg.train.seq_len)
    m, t = cfg.model, cfg.train
    device = jax.devices()[0]
    mesh = " x ".join(f"{axis}={size}" for axis, size in trainer.mesh.shape.items() if size > 1) or "single device"
    tokens_per_step = t.batch_size * t.seq_len
    per_device = device_bytes(memory)
    lines = [
        f"model    {m.family}: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, vocab {m.vocab_size}, "
        f"{m.position} positions, {m.activation}, {m.norm}, {m.dtype}",
        f"params   {_human(counts.total)} total, {_human(counts.non_embedding)} non-embedding",
        f"flops    {_human(fpt)} per token, {_human(fpt * tokens_per_step)} per step (training)",
        f"data     {cfg.data.source}: batch {t.batch_size} x {t.seq_len} = {tokens_per_step} tokens/step, {t.steps} steps",
        f"devices  {jax.device_count()} x {device.platform} ({device.device_kind}), {jax.process_count()} process(es); "
        f"mesh {mesh}",
        *([f"pipeline {trainer.pipeline.describe()}"] if trainer.pipeline else []),
        f"memory   {_human(per_device, 'B')} per device (arguments {_human(memory.get('argument', 0), 'B')}, "
        f"temporaries {_human(memory.get('temp', 0), 'B')}); compiled in {compile_s:.1f}s",
        f"peak     {_human(peak[0], 'FLOP/s')} per device ({peak[1]})",
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


def train(cfg: Config, run_dir: Path, quiet: bool = False) -> RunResult:
    """Train `cfg` in `run_dir`: write config.yaml, metrics.jsonl and TensorBoard events."""
    run_dir = Path(run_dir)
    is_writer = jax.process_index() == 0  # one writer for files shared by all processes
    trainer = Trainer.build(cfg)
    source = make_source(cfg, *trainer.data_shard())  # only the rows this process's devices hold
    state = trainer.init_state()
    start_step = 0

    compile_s, memory = trainer.compile(state, trainer.put_batch(source.batch(start_step)))
    peak, peak_source = peak_flops_per_device(cfg.logging.peak_flops, cfg.model.dtype)
    if is_writer:
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        if not quiet:
            print(f"scalelab train: {cfg.name} -> {run_dir}")
            print(summary(cfg, trainer, (peak, peak_source), compile_s, memory), flush=True)
    writer = MetricsWriter(run_dir, tensorboard=cfg.logging.tensorboard) if is_writer else None

    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    flops_per_step = flops_per_token(cfg.model, cfg.train.seq_len) * tokens_per_step
    total_peak = peak * jax.device_count()
    steps = cfg.train.steps
    progress = tqdm(
        total=steps,
        initial=start_step,
        desc=cfg.name,
        unit="step",
        disable=quiet or not cfg.logging.progress or not is_writer,
        dynamic_ncols=True,
    )
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    last_flush = time.perf_counter()
    final_loss, eval_loss, best_eval = float("nan"), None, None

    def flush_pending() -> None:
        nonlocal last_flush, final_loss
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        now = time.perf_counter()
        step_time = (now - last_flush) / len(pending)
        last_flush = now
        for (step, _), metrics in zip(pending, fetched, strict=True):
            record = {k: float(v) for k, v in metrics.items() if k != "finite"}
            if not bool(metrics["finite"]) and cfg.train.nan_policy == "stop":
                raise NonFiniteLossError(
                    f"step {step}: loss {record['loss']} / grad norm {record['grad_norm']} is not finite "
                    "(train.nan_policy=stop); lower optimizer.lr, enable clipping, or set train.nan_policy=skip"
                )
            final_loss = record["loss"]
            record.update(
                step=step,
                step_time_s=step_time,
                tokens_per_s=tokens_per_step / step_time,
                mfu=flops_per_step / step_time / total_peak,
                skipped=not bool(metrics["finite"]),
            )
            if writer is not None:
                writer.write(record)
        progress.set_postfix(loss=f"{final_loss:.3f}", refresh=False)
        pending.clear()

    for step in range(start_step, steps):
        batch = trainer.put_batch(source.batch(step))
        state, metrics = trainer.train_step(state, batch)
        pending.append((step, metrics))
        progress.update(1)
        last = step + 1 == steps
        if len(pending) >= cfg.logging.log_every or last:
            flush_pending()
        if cfg.train.eval_every and ((step + 1) % cfg.train.eval_every == 0 or last):
            flush_pending()
            eval_loss = evaluate(trainer, state["params"], source)
            best_eval = eval_loss if best_eval is None else min(best_eval, eval_loss)
            if writer is not None:
                writer.write({"step": step, "eval_loss": eval_loss})
                writer.flush()
            progress.set_postfix(loss=f"{final_loss:.3f}", eval=f"{eval_loss:.3f}")
            last_flush = time.perf_counter()  # evaluation time is not training step time
    progress.close()
    if writer is not None:
        writer.close()
    return RunResult(run_dir, steps, final_loss, eval_loss, best_eval, state)
