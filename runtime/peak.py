"""The peak FLOP/s that MFU divides by: configured, from a vendor table, or measured."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

from scalelab.runtime.host import usable_cores

PEAK_CACHE = "peak.json"
# Rates no hardware reaches: a measurement above them timed something other than the matmuls and is
# thrown away. A CPU core peaks near 2 TFLOP/s in bf16 (AMX); an accelerator chip near 2 PFLOP/s (fp8).
PLAUSIBLE_PER_CPU_CORE = 4e12
PLAUSIBLE_PER_ACCELERATOR = 5e15
# A kept best more than this many times this run's own measurement on a quiet host is not believed (and
# replaced): a quiet host measures up to a few times slower, never this much, so it was a bad measurement.
TRUSTED_RATIO = 8.0

# Dense bf16 peak per chip, from vendor datasheets (no sparsity).
VENDOR_PEAK_BF16: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


@functools.lru_cache(maxsize=8)
def measured_matmul_flops(dtype: str = "bfloat16", size: int | None = None, rounds: int = 3) -> float:
    """Achieved FLOP/s of square matmuls on this process's first device (fp32 accumulation for bf16 inputs).

    Without `size`, the best of several sizes (fastest_matmul).
    """
    if size:
        return matmul_flops_rate(dtype, 1, size, size, size, rounds)
    return fastest_matmul(dtype, rounds)[0]


@functools.lru_cache(maxsize=8)
def fastest_matmul(dtype: str = "bfloat16", rounds: int = 3) -> tuple[float, int]:
    """(FLOP/s, size) of the fastest square matmul size on this process's first device.

    Which size a device runs fastest depends on its caches and kernels (on a 2-core AMX CPU, 1024
    beats 2048 by a third).
    """
    on_cpu = jax.local_devices()[0].platform == "cpu"
    # On a CPU, 4096 was never the fastest and costs 8x a 2048 burst at every run's start-up.
    sizes = [1024, 2048] if on_cpu else [4096, 8192]
    return max((matmul_flops_rate(dtype, 1, n, n, n, rounds), n) for n in sizes)


def matmul_flops_rate(dtype: str, batch: int, m: int, k: int, n: int, rounds: int = 3) -> float:
    """Achieved FLOP/s of `batch` (m, k) x (k, n) matmuls on this process's first device, fp32 accumulation.

    The best of `rounds` timed bursts of about 0.1 s: other work on a shared host only ever
    slows a burst down, so the fastest one is closest to what the device can do.
    """
    # A device of this process: in a multi-process job jax.devices()[0] may belong to another
    # process, and timing work this process cannot run gave rates a thousand times the hardware's.
    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((batch, m, k), dtype), device)
    b = jax.device_put(jnp.ones((batch, k, n), dtype), device)
    matmul = jax.jit(lambda x, y: jnp.einsum("bmk,bkn->bmn", x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    repeats = max(1, int(0.1 / (time.perf_counter() - start)))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            out = matmul(a, b)
        out.block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * batch * m * k * n * repeats / best


def vendor_peak(device: jax.Device) -> float | None:
    """The datasheet bf16 peak of an accelerator, matched by device kind; None if unknown."""
    kind = getattr(device, "device_kind", "")
    for name, flops in VENDOR_PEAK_BF16.items():
        if name.lower() in kind.lower():
            return flops
    return None


def peak_flops_per_device(configured: float | None, dtype: str) -> tuple[float, str]:
    """(peak FLOP/s per device, where it came from)."""
    if configured is not None:
        return configured, "configured"
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        flops = vendor_peak(device)
        if flops is not None:
            return flops, f"{device.device_kind} datasheet"
    # Simulated CPU devices share the host's cores, so each gets an equal share of the host's rate.
    flops, path = remembered_matmul_flops(dtype)
    return flops / jax.local_device_count(), f"best measured {dtype} matmul on {device.platform}, kept in {path}"


def remembered_matmul_flops(dtype: str) -> tuple[float, Path]:
    """The best matmul FLOP/s this host has shown, with this run's measurement: (FLOP/s, cache file).

    Measured afresh at each start, the rate moved by 2x between runs on a busy host, so the MFU
    of two runs could not be compared. Other work only ever slows a measurement down, so the
    best one kept in the cache is the closest to the hardware, and a busy moment cannot lower it.
    A measurement no hardware could reach is never kept, and a kept best that this run's own
    measurement does not come near (TRUSTED_RATIO) is replaced, so one bad value lasts one run at most.
    Finding the fastest size takes every size's bursts; once a best is kept, each run checks it with
    one burst of the size that set it.
    """
    from scalelab.files import cache_dir, write_atomic

    path = cache_dir() / PEAK_CACHE
    key = _host_key(dtype)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key)
    best = entry.get("flops") if isinstance(entry, dict) else None
    best = float(best) if isinstance(best, int | float) and best > 0 else 0.0
    size = entry.get("size") if isinstance(entry, dict) else None
    if best > 0 and isinstance(size, int) and size > 0:
        # A kept best only needs checking, not finding again: one burst of the size that set it costs
        # a fraction of trying every size (0.2 to 0.8 s against 1.5 to 1.7 s on a 2-core CPU, at every start).
        flops = measured_matmul_flops(dtype, size=size, rounds=1)
    else:
        flops, size = fastest_matmul(dtype)
    limit = plausible_flops()
    if flops > limit:  # this run's own measurement is impossible: keep nothing of it
        warnings.warn(
            f"measured {flops:.3g} FLOP/s, above what this hardware can do ({limit:.3g}); "
            "MFU uses the kept best or, without one, that limit",
            stacklevel=2,
        )
        return (best if 0 < best <= limit else limit), path
    # A kept value no measurement supports is replaced rather than divided by forever. On a host busier
    # than its cores (or a niced process), a measurement can be ten times slow, so there the kept best
    # is only tested against what no hardware could reach.
    busy = host_load() > usable_cores()
    if best > limit or (not busy and best > TRUSTED_RATIO * flops):
        best = 0.0
    if flops > best:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        known[key] = {"flops": flops, "size": size, "measured": now}
    elif (
        isinstance(entry, dict) and entry.get("size") != size
    ):  # the kept best without the size that checks it: note this run's fastest
        known[key] = {**entry, "size": size}
    else:
        return best, path
    with contextlib.suppress(OSError):  # a read-only cache only loses the comparison with later runs
        write_atomic(path, json.dumps(known, indent=1) + "\n")
    return max(flops, best), path


def host_load() -> float:
    """The 1-minute load average (runnable processes), or 0 where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def plausible_flops() -> float:
    """The most FLOP/s this process's devices could possibly reach (all usable cores on a CPU)."""
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return PLAUSIBLE_PER_CPU_CORE * usable_cores()
    return PLAUSIBLE_PER_ACCELERATOR  # the measurement runs on one device


def _host_key(dtype: str) -> str:
    """What decides the matmul rate: processor, cores this process may use, backend and dtype."""
    device = jax.local_devices()[0]
    return " | ".join(
        (
            _processor_name(),
            f"{usable_cores()} cores",
            device.device_kind,
            f"jax {jax.__version__}",
            dtype,
        )
    )


def _processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
