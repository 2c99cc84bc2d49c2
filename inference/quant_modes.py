"""The quantization modes, one registry: what `generate --quantize` and `bench quant` offer.

Each mode names its weight grid (bits, and inputs per scale: 0 is one scale per output channel)
and what happens to the activations: `none` (weight-only: the weight is widened to the compute
dtype right before its matmul), `dynamic` (each token's activations get their own scale, and the
matmul multiplies integers or fp8 numbers) or `calibrated` (one activation scale per matmul and
layer, measured on a few batches by inference/calibrate.py).
"""

from __future__ import annotations

import dataclasses
import functools

from scalelab.errors import UserError


@dataclasses.dataclass(frozen=True)
class QuantMode:
    """One way to quantize a model."""

    name: str
    bits: int  # weight bits: 8 or 4 (an fp8 mode says 8)
    group_size: int  # inputs per weight scale; 0: one scale per output channel
    activations: str  # none, dynamic or calibrated
    help: str
    float8: bool = False  # float8_e4m3fn weights and activations instead of integers


MODES: dict[str, QuantMode] = {
    m.name: m
    for m in (
        QuantMode("int8", 8, 0, "none", "int8 weights, one scale per output channel; bf16 matmuls"),
        QuantMode("int4", 4, 0, "none", "int4 weights (two per byte), one scale per output channel"),
        QuantMode("int4-g32", 4, 32, "none", "int4 weights, one scale per 32 inputs of each output channel"),
        QuantMode("int4-g64", 4, 64, "none", "int4 weights, one scale per 64 inputs of each output channel"),
        QuantMode("w8a8", 8, 0, "dynamic", "int8 weights and int8 activations (a scale per token); int8 matmuls"),
        QuantMode(
            "w8a8-calibrated", 8, 0, "calibrated", "int8 weights, int8 activations with scales calibrated on batches"
        ),
        QuantMode("fp8", 8, 0, "dynamic", "float8_e4m3 weights and activations (a scale per token)", float8=True),
    )
}


KV_CACHE_DTYPES = ("model", "int8")  # the model's compute dtype, or int8 with a scale per token and head


@functools.cache
def _runs_fp8(backend: str) -> str | None:
    """None if this backend compiles and runs an fp8 x fp8 matmul, else the error it gave."""
    import jax  # here, not above: the CLI lists the modes without importing JAX
    import jax.numpy as jnp

    try:
        x = jnp.ones((2, 4), jnp.float8_e4m3fn)
        out = jax.jit(lambda a: jnp.einsum("ik,jk->ij", a, a, preferred_element_type=jnp.float32))(x)
        return None if float(out[0, 0]) == 4.0 else f"an fp8 matmul gave {float(out[0, 0])} for 4"
    except Exception as e:  # any compile or run failure means: not on this backend
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def backend_problem(mode: QuantMode) -> str | None:
    """Why the default backend cannot run `mode`, or None."""
    import jax

    return _runs_fp8(jax.default_backend()) if mode.float8 else None


def check_backend(mode: QuantMode) -> None:
    """UserError naming the backend and the modes it runs, if it cannot run `mode`."""
    problem = backend_problem(mode)
    if problem is not None:
        import jax

        runs = ", ".join(name for name, m in MODES.items() if backend_problem(m) is None)
        raise UserError(
            f"--quantize {mode.name}: the {jax.default_backend()} backend cannot run it ({problem}); it runs {runs}"
        )


def mode(name: str) -> QuantMode:
    """The mode called `name`, or UserError listing them."""
    if name not in MODES:
        raise UserError(f"unknown quantization mode {name!r}; choose one of {', '.join(MODES)}")
    return MODES[name]
