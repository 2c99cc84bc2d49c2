"""A training session's metric lines: step metrics fetched from the devices in groups, checked against
the NaN policy and written with throughput and MFU, and the eval losses a run reports at its end."""

from __future__ import annotations

import time
from pathlib import Path

import jax
from tqdm import tqdm

from scalelab.data.objectives import model_lengths
from scalelab.model.counting import flops_per_token
from scalelab.train.config import Config
from scalelab.train.faults import NonFiniteLossError
from scalelab.train.metrics import MetricsWriter, truncate_metrics


class RollbackRequested(Exception):
    """A non-finite step under nan_policy=rollback: undo it by restoring the last checkpoint."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


class SessionMetrics:
    """Buffers each step's metrics on the device and writes them, log_every steps at a time.

    Fetching every step would stall the host on the device; the NaN policy is applied when a
    group is fetched, since that is when the host first sees whether a step was finite.
    """

    def __init__(self, cfg: Config, run_dir: Path, progress: tqdm, start_step: int, peak_per_device: float):
        self.cfg, self.run_dir, self.progress = cfg, run_dir, progress
        self.is_writer = jax.process_index() == 0  # one writer for files shared by all processes
        self.pending: list[tuple[int, int, dict[str, jax.Array]]] = []  # (step, data index, device metrics)
        self.last_flush = time.perf_counter()
        self.writer: MetricsWriter | None = None
        self.evals: dict[int, float] = {}
        self.final_loss = float("nan")
        self.reopen(start_step)
        self.tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
        lengths = model_lengths(cfg)  # what each row puts through the model under its objective
        self.flops_per_step = flops_per_token(cfg.model, cfg.train.seq_len, lengths) * self.tokens_per_step
        self.total_peak = peak_per_device * jax.device_count()

    def reopen(self, step: int) -> None:
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

    def add(self, step: int, index: int, metrics: dict[str, jax.Array]) -> None:
        """Buffer the (still on-device) metrics of `step`, which trained on data batch `index`."""
        self.pending.append((step, index, metrics))

    def due(self, last: bool) -> bool:
        """Whether the buffer should be written now: log_every steps are waiting, or training ended."""
        return len(self.pending) >= self.cfg.logging.log_every or last

    def flush(self) -> None:
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
                raise RollbackRequested(step)
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

    def record_eval(self, step: int, eval_loss: float, extra: dict[str, float] | None = None) -> None:
        """Write the eval loss measured after `step` (and a stage's `extra` eval metrics) and show it."""
        self.evals[step] = eval_loss
        if self.writer is not None:
            self.writer.write({"step": step, "eval_loss": eval_loss, **(extra or {})})
            self.writer.flush()
        self.progress.set_postfix(loss=f"{self.final_loss:.3f}", eval=f"{eval_loss:.3f}")
        self.last_flush = time.perf_counter()  # evaluation time is not training step time

    def make_durable(self) -> None:
        """Make the lines written so far durable, so they never lag a checkpoint being saved."""
        if self.writer is not None:
            self.writer.flush(durable=True)

    def close(self) -> None:
        """Close the metrics files (safe to call twice)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
