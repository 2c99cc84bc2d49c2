"""Meshes on 8 simulated CPU devices: tokens/s, per-device memory and the pipeline bubble.

Run: `.venv/bin/python -m scalelab.bench.mesh_bench [--steps N] [--out PATH]`. Writes bench/results/mesh.json.

The simulated devices share the host's cores, so tokens/s here measures what each layout
costs in collectives and bookkeeping, not how it would scale on real chips. Memory is per
device and does carry over: it comes from XLA's analysis of the compiled step and from the
shards of the train state each device holds.
"""

from __future__ import annotations

import os

# Before JAX starts: 8 simulated devices unless the caller chose otherwise.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import time
from pathlib import Path
from typing import Any

import jax

from scalelab.bench.report import RESULTS_DIR, write_json
from scalelab.data import make_source
from scalelab.train.config import Config
from scalelab.train.config_io import config_from_dict, to_dict
from scalelab.train.trainer import Trainer, device_bytes

# Small enough that nine meshes compile and run in minutes on a 2-core CPU.
BASE: dict[str, Any] = {
    "name": "mesh-bench",
    "model": {"d_model": 64, "n_layers": 8, "n_heads": 8, "vocab_size": 512, "max_seq_len": 64},
    "train": {"batch_size": 32, "seq_len": 64, "eval_every": 0},
    "schedule": {"warmup_steps": 0},
    "logging": {"progress": False, "tensorboard": False, "peak_flops": 1e12},
}

SINGLE = "single device"  # the baseline runs on the first device alone
MESHES: dict[str, dict[str, Any]] = {
    SINGLE: {"data": 1},
    "data=8": {"data": 8},
    "fsdp=8": {"data": 1, "fsdp": 8},
    "tensor=8": {"data": 1, "tensor": 8},
    "data=2 fsdp=2 tensor=2": {"data": 2, "fsdp": 2, "tensor": 2},
    "pipeline=4 gpipe, 8 microbatches": {"data": 2, "pipeline": 4, "microbatches": 8, "schedule": "gpipe"},
    "pipeline=4 circular, 8 microbatches": {"data": 2, "pipeline": 4, "microbatches": 8, "schedule": "circular"},
    "data=2 tensor=2 pipeline=2": {"data": 2, "tensor": 2, "pipeline": 2, "microbatches": 4},
    "fsdp=2 tensor=2 pipeline=2": {"data": 1, "fsdp": 2, "tensor": 2, "pipeline": 2, "microbatches": 4},
}


def _state_bytes_per_device(state: Any) -> int:
    """Bytes of parameters and optimizer state on the first device (every device holds the same amount)."""
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(state))


def measure(cfg: Config, steps: int, devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Compile one mesh's train step, time `steps` steps after a warm-up, and report its costs."""
    trainer = Trainer.build(cfg, devices)
    source = make_source(cfg, *trainer.data_shard())
    state = trainer.init_state()
    batches = [trainer.put_batch(source.batch(i)) for i in range(2)]
    compile_s, memory = trainer.compile(state, batches[0])
    state, metrics = trainer.train_step(state, batches[0])  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = trainer.train_step(state, batches[i % 2])
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps
    return {
        "mesh": {axis: size for axis, size in trainer.mesh.shape.items() if size > 1},
        "tokens_per_s": cfg.train.batch_size * cfg.train.seq_len / step_s,
        "step_time_s": step_s,
        "compile_s": compile_s,
        "memory_per_device_bytes": device_bytes(memory),
        "compiled_memory": memory,
        "params_and_optimizer_bytes_per_device": _state_bytes_per_device((state["params"], state["opt_state"])),
        "pipeline": None
        if trainer.pipeline is None
        else {
            "schedule": trainer.pipeline.schedule,
            "stages": trainer.pipeline.stages,
            "repeats": trainer.pipeline.repeats,
            "microbatches": trainer.pipeline.microbatches,
            "bubble": trainer.pipeline.bubble,
        },
        "loss": float(metrics["loss"]),
    }


def main(argv: list[str] | None = None) -> None:
    """Benchmark every mesh, print a table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mesh (after one warm-up step)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "mesh.json", help="results JSON")
    args = parser.parse_args(argv)

    results = {}
    print(f"{'mesh':38} {'tokens/s':>10} {'memory/device':>14} {'state/device':>13} {'bubble':>7}")
    for name, mesh in MESHES.items():
        cfg = config_from_dict({**BASE, "mesh": mesh})
        result = measure(cfg, args.steps, jax.devices()[:1] if name == SINGLE else None)
        results[name] = result
        bubble = "" if result["pipeline"] is None else f"{result['pipeline']['bubble']:.1%}"
        print(
            f"{name:38} {result['tokens_per_s']:10.0f} {result['memory_per_device_bytes'] / 2**20:11.2f} MiB "
            f"{result['params_and_optimizer_bytes_per_device'] / 2**20:9.2f} MiB {bubble:>7}",
            flush=True,
        )
    device = jax.devices()[0]
    report = {
        "devices": f"{jax.device_count()} x {device.platform} ({device.device_kind}), simulated on one host",
        "jax": jax.__version__,
        "steps": args.steps,
        "config": to_dict(config_from_dict(BASE)),
        "meshes": results,
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
