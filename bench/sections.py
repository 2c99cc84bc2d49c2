"""The benchmark's measurements: peak, throughput ladder, remat policies and depth.

Each returns plain rows (dicts) that bench/suite.py prints and writes; nothing here formats.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from typing import Any

import jax

from scalelab.bench import ours
from scalelab.bench.ceiling import matmul_ceiling
from scalelab.bench.measure import Steppable, Timing, interleave
from scalelab.bench.shapes import DEPTH_BASE, Shape
from scalelab.model.counting import count_params, flops_per_token
from scalelab.model.stack import REMAT_POLICIES
from scalelab.runtime.host import release_freed_memory
from scalelab.runtime.peak import measured_matmul_flops, vendor_peak
from scalelab.train.trainer import device_bytes

OURS_VARIANTS = {"ours-bf16": "bfloat16", "ours-fp32": "float32"}


@dataclasses.dataclass(frozen=True)
class Peaks:
    """Per-device peak FLOP/s: measured fp32 and bf16 matmuls, and the datasheet bf16 figure if known."""

    fp32: float
    bf16: float
    vendor: float | None

    def measured(self, precision: str) -> float:
        """The measured peak of a precision ('float32' or 'bfloat16')."""
        return self.fp32 if precision == "float32" else self.bf16


def measure_peaks(device: jax.Device, rounds: int) -> Peaks:
    """Measure the device's matmul rates (best of `rounds` bursts) and look up its datasheet."""
    return Peaks(
        fp32=measured_matmul_flops("float32", rounds=rounds),
        bf16=measured_matmul_flops("bfloat16", rounds=rounds),
        vendor=None if device.platform == "cpu" else vendor_peak(device),
    )


def memory_budget(device: jax.Device) -> int | None:
    """Bytes a run may use on `device`: 90% of an accelerator's limit, 80% of the host's free memory."""
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        return int(0.9 * limit) if limit else None
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError):
        return None


def _torch_variants(names: list[str], device: jax.Device) -> tuple[Any, str | None]:
    """The baseline module, or None and why it cannot run here."""
    if not names:
        return None, None
    try:
        from scalelab.bench import torch_gpt
    except ImportError:
        return None, "torch is not installed (pip install -e '.[bench]'): no PyTorch baseline"
    if device.platform != "cpu" and torch_gpt.device().type == "cpu":
        return None, "this torch has no CUDA build: the baseline would run on the host CPU, so it is skipped"
    torch_gpt.torch.set_num_threads(len(os.sched_getaffinity(0)))
    return torch_gpt, None


def _shape_fields(shape: Shape) -> dict[str, Any]:
    cfg = shape.config().model
    return {
        "rung": shape.name,
        "d_model": shape.d_model,
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "seq_len": shape.seq_len,
        "batch_size": shape.batch_size,
        "vocab_size": shape.vocab_size,
        "params": count_params(cfg).total,
        "flops_per_token": flops_per_token(cfg, shape.seq_len),
    }


def _speed(shape: Shape, timing: Timing, precision: str, peaks: Peaks, n_devices: int) -> dict[str, Any]:
    """tokens/s, step time and MFU against the measured peak of `precision` and the datasheet."""
    tokens_per_s = shape.tokens_per_step / timing.step_s
    achieved = flops_per_token(shape.config().model, shape.seq_len) * tokens_per_s / n_devices
    return {
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_best": shape.tokens_per_step / timing.best_step_s,
        "step_s": timing.step_s,
        "mfu": achieved / peaks.measured(precision),
        "mfu_bf16_peak": achieved / peaks.bf16,
        "mfu_vendor": achieved / peaks.vendor if peaks.vendor else None,
        "windows": timing.windows,
    }


def _release(runs: list[Steppable]) -> None:
    for run in runs:
        if isinstance(run, ours.OursRun):
            run.release()
    runs.clear()
    gc.collect()
    release_freed_memory()


def ladder(
    shapes: list[Shape],
    variants: list[str],
    devices: list[jax.Device],
    peaks: Peaks,
    rounds: int,
    window_s: float,
    log: Any = print,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of every rung x variant, timed interleaved per rung; and notes on what was skipped."""
    platform, budget = devices[0].platform, memory_budget(devices[0])
    torch_names = [v for v in variants if v.startswith("torch-")]
    torch_gpt, torch_note = _torch_variants(torch_names, devices[0])
    notes = [torch_note] if torch_note else []
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        if shape.accelerator_only and platform == "cpu":
            notes.append(f"{shape.name}: accelerator-only rung, skipped on a CPU")
            continue
        log(f"ladder {shape.name}: compiling")
        compiled = {
            v: ours.compile_only(shape, dtype, devices=devices) for v, dtype in OURS_VARIANTS.items() if v in variants
        }
        need = max(device_bytes(memory) for _, _, memory in compiled.values())
        if budget is not None and need > budget:
            notes.append(
                f"{shape.name}: needs {need / 2**30:.1f} GiB per device, over the {budget / 2**30:.1f} "
                "GiB budget; the ladder stops here"
            )
            break
        runs: list[Steppable] = [ours.start(v, shape, c) for v, c in compiled.items()]
        if torch_gpt is not None:
            for name in torch_names:
                log(f"ladder {shape.name}: warming up {name}")
                runs.append(torch_gpt.build(name, shape))
        log(f"ladder {shape.name}: timing {len(runs)} variants x {rounds} rounds")
        timings = interleave(runs, rounds, window_s)
        compile_s = {run.name: run.compile_s for run in runs}
        best_torch = max(
            (shape.tokens_per_step / timings[n].step_s for n in timings if n.startswith("torch-")), default=None
        )
        _release(runs)  # before the ceiling's matmuls, which time best on an otherwise idle device
        ceiling = matmul_ceiling(shape, peaks.bf16) if "ours-bf16" in timings else {}
        for name, timing in timings.items():
            is_ours = name in compiled
            precision = OURS_VARIANTS[name] if is_ours else "float32" if "fp32" in name else "bfloat16"
            speed = _speed(shape, timing, precision, peaks, len(devices) if is_ours else 1)
            rows.append(
                {
                    **_shape_fields(shape),
                    "impl": name,
                    **speed,
                    "mfu_ceiling": ceiling.get("mfu_ceiling") if name == "ours-bf16" else None,
                    "compile_s": compile_s[name],
                    "memory_bytes": device_bytes(compiled[name][2]) if is_ours else None,
                    "vs_torch_best": speed["tokens_per_s"] / best_torch if is_ours and best_torch else None,
                }
            )
    return rows, notes


def remat(
    shapes: list[Shape], devices: list[jax.Device], peaks: Peaks, rounds: int, window_s: float, log: Any = print
) -> list[dict[str, Any]]:
    """Memory against speed for every remat policy, timed interleaved per shape."""
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        log(f"remat {shape.name}: compiling {len(REMAT_POLICIES)} policies")
        runs = [
            ours.start(policy, shape, ours.compile_only(shape, remat=policy, devices=devices))
            for policy in REMAT_POLICIES
        ]
        timings = interleave(runs, rounds, window_s)
        base = runs[0]
        for run in runs:
            speed = _speed(shape, timings[run.name], "bfloat16", peaks, len(devices))
            rows.append(
                {
                    "rung": shape.name,
                    "policy": run.name,
                    **speed,
                    "compile_s": run.compile_s,
                    "memory_bytes": device_bytes(run.memory),
                    "temp_bytes": run.memory.get("temp"),
                    "speed_vs_none": timings[base.name].step_s / timings[run.name].step_s,
                    "memory_vs_none": device_bytes(run.memory) / device_bytes(base.memory),
                }
            )
        _release(runs)
    return rows


def depth(
    depths: list[int], unrolled_max: int, devices: list[jax.Device], rounds: int, window_s: float, log: Any = print
) -> list[dict[str, Any]]:
    """Compile time and step time against the number of layers: in the layer loop at every depth, and
    the compile time unrolled up to `unrolled_max` layers."""
    runs = []
    unrolled: dict[int, float] = {}
    for n_layers in depths:
        shape = DEPTH_BASE.with_layers(n_layers)
        log(f"depth {n_layers} layers: compiling")
        # At every depth, or a CPU would unroll the shallow ones and the column would mix two programs.
        looped = ours.compile_only(shape, devices=devices, unroll_max_layers=0)
        runs.append(ours.start(shape.name, shape, looped))
        if n_layers <= unrolled_max:
            _, unrolled[n_layers], _ = ours.compile_only(shape, devices=devices, scan_layers=False)
    timings = interleave(runs, rounds, window_s)
    first = runs[0].compile_s
    rows = []
    for n_layers, run in zip(depths, runs, strict=True):
        timing = timings[run.name]
        rows.append(
            {
                "n_layers": n_layers,
                "compile_s": run.compile_s,
                "compile_vs_first": run.compile_s / first,
                "unrolled_compile_s": unrolled.get(n_layers),
                "step_s": timing.step_s,
                "tokens_per_s": DEPTH_BASE.tokens_per_step / timing.step_s,
                "memory_bytes": device_bytes(run.memory),
            }
        )
    _release(runs)
    return rows
