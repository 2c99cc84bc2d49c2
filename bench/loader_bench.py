"""Loader throughput against what gpt-tiny's train step consumes, on the default corpus.

Run: .venv/bin/python -m scalelab.bench.loader_bench. Prepares the default dataset and its tokenizer
first if they are missing. Writes bench/results/loader.json; the target ratio is >= 10.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax

from scalelab.bench.report import RESULTS_DIR, write_json
from scalelab.data.builder import prepare_dataset
from scalelab.data.loader import TfdsSource
from scalelab.data.tokens import build_store
from scalelab.train.config_io import load_config
from scalelab.train.trainer import Trainer

TARGET_RATIO = 10.0


def loader_tokens_per_s(source: TfdsSource, steps: int) -> float:
    """Tokens per second that `batch(step)` builds, on demand and on one thread."""
    start = time.perf_counter()
    for step in range(steps):
        source.batch(step)
    seconds = time.perf_counter() - start
    return steps * source.batch_size * source.seq_len / seconds


def train_tokens_per_s(cfg, source: TfdsSource, steps: int) -> tuple[float, float]:
    """(tokens per second the train step consumes, share of loop time spent waiting for prefetched data)."""
    trainer = Trainer.build(cfg)
    state = trainer.init_state()
    trainer.compile(state, trainer.put_batch(source.batch(0)))
    for step in range(3):  # warm-up: first dispatches, allocator
        state, _ = trainer.train_step(state, trainer.put_batch(source.batch(step)))
    jax.block_until_ready(state)
    waited = 0.0
    start = time.perf_counter()
    for step in range(3, 3 + steps):
        before = time.perf_counter()
        batch = source.batch(step)
        waited += time.perf_counter() - before
        state, _ = trainer.train_step(state, trainer.put_batch(batch))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    return steps * cfg.train.batch_size * cfg.train.seq_len / seconds, waited / seconds


def main(argv: list[str] | None = None) -> int:
    """Measure, print the ratio and write the results file."""
    parser = argparse.ArgumentParser(prog="python -m scalelab.bench.loader_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="gpt-tiny-text", help="a config with data.source=tfds")
    parser.add_argument("--loader-steps", type=int, default=2000)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "loader.json", help="results JSON")
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    prepare_dataset(cfg.data)
    build_store(cfg.data, cfg.model.vocab_size)
    on_demand = TfdsSource(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prefetch=0)))
    loader = loader_tokens_per_s(on_demand, args.loader_steps)
    prefetched = TfdsSource(cfg)
    train, wait_share = train_tokens_per_s(cfg, prefetched, args.train_steps)
    prefetched.close()
    ratio = loader / train
    result = {
        "config": cfg.name,
        "batch_size": cfg.train.batch_size,
        "seq_len": cfg.train.seq_len,
        "devices": jax.device_count(),
        "loader_tokens_per_s": round(loader),
        "train_tokens_per_s": round(train),
        "ratio": round(ratio, 1),
        "target_ratio": TARGET_RATIO,
        "prefetched_wait_share": round(wait_share, 4),
    }
    print(
        f"loader {loader:,.0f} tokens/s (one thread, no prefetch) vs {cfg.name} train step {train:,.0f} tokens/s "
        f"on {jax.device_count()} {jax.default_backend()} device(s): ratio {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x); "
        f"with prefetch the loop waits on data {wait_share:.2%} of the time"
    )
    print(f"wrote {write_json(args.out, result)}")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
