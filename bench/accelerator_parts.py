"""The accelerator check's four parts and the sizes they run at; bench/accelerator_check.py runs them.

Each part takes a Plan, the device and a log function, prints its numbers as it goes and returns
them as one JSON-ready dict ({"skipped": reason} when it cannot run here).
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax

from scalelab.bench import ours
from scalelab.bench.decode_bench import MODEL as QUICK_DECODE_MODEL
from scalelab.bench.measure import Contender, interleave
from scalelab.bench.sections import memory_budget
from scalelab.bench.shapes import Shape, by_name
from scalelab.data import make_source
from scalelab.errors import ConfigError
from scalelab.inference.decode import generate
from scalelab.model.config import ModelConfig
from scalelab.model.counting import flops_per_token
from scalelab.model.functional import describe
from scalelab.runtime.peak import measured_matmul_flops, peak_flops_per_device
from scalelab.train.trainer import Trainer, device_bytes

MFU_TARGET, MFU_STRETCH = 0.50, 0.55
# One bf16 rounding is up to 0.4% of a value, but the loss itself is fp32 (shared/DESIGN.md), so the curves
# differ only by the weights' drift: bf16 and fp32 curves of the tiny rung differed by at most 0.02% over
# 40 steps on a 2-core CPU and by 0.01-0.03% on an H200, whose kernels sum in other orders. 1% leaves
# room for other devices and still fails a run whose bf16 curve drifts away.
AGREEMENT_TOLERANCE = 0.01
CPU_MFU_REASON = "skipped on a CPU: the gpt-1b rung cannot train for a few timed steps in minutes there"
# What a fused kernel leaves in the compiled program: JAX emits cuDNN attention as custom calls named
# `__cudnn$fmha...`, which XLA keeps to the end (its thunks are chosen by that name); Pallas's TPU kernels
# (splash) compile to `tpu_custom_call`.
FUSED_MARKERS = {"cudnn": "__cudnn$fmha", "splash": "tpu_custom_call"}
# Toy shapes of --quick, small enough that every part compiles and runs in seconds on 2 cores.
TOY_ATTENTION = Shape("attn-toy", d_model=32, n_layers=1, n_heads=2, seq_len=64, batch_size=2, vocab_size=64)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and step counts of one check, chosen so a full one fits the 8-minute budget on one H200."""

    mfu_shape: Shape
    attention_shapes: tuple[Shape, ...]  # one per sequence length, equal tokens per step
    attention_impls: tuple[str, str]  # (fused, baseline)
    decode_model: ModelConfig
    decode_batch: int
    decode_prompt: int
    decode_new: int
    agreement_shape: Shape
    agreement_steps: int
    rounds: int  # timing windows per contender (median reported)
    window_s: float


def make_plan(quick: bool, platform: str) -> Plan:
    """The full check for an accelerator, or toy sizes of every part (--quick)."""
    fused = {"gpu": "cudnn", "tpu": "splash"}.get(platform, "einsum")
    tiny = by_name(["tiny"])[0]
    if quick:
        return Plan(
            mfu_shape=tiny,  # a smoke run where an accelerator is (a CPU skips this part)
            attention_shapes=(TOY_ATTENTION, dataclasses.replace(TOY_ATTENTION, name="attn-toy-4x", seq_len=256)),
            attention_impls=(fused, "xla"),
            decode_model=dataclasses.replace(QUICK_DECODE_MODEL, n_layers=2),
            decode_batch=2,
            decode_prompt=16,
            decode_new=16,
            agreement_shape=tiny,
            agreement_steps=8,
            rounds=1,
            window_s=0.2,
        )
    big = by_name(["gpt-1b"])[0]
    # 8192 tokens per step at both lengths, so the ratio between lengths is attention's growth alone. XLA's
    # attention keeps every layer's 8k x 8k scores for the backward pass: all 18 layers need ~210 GiB at 8k
    # (XLA's CPU memory analysis), 6 need ~73 GiB, so the comparison runs the 1B's width at 6 of its 18 layers.
    attention_depth = 6
    lengths = tuple(
        dataclasses.replace(big, name=f"gpt-1b-L{attention_depth}-{seq // 1024}k", seq_len=seq, batch_size=8192 // seq)
        for seq in (2048, 8192)
    )
    lengths = tuple(dataclasses.replace(shape, n_layers=attention_depth) for shape in lengths)
    return Plan(
        mfu_shape=big,
        attention_shapes=lengths,
        attention_impls=(fused, "xla"),
        decode_model=big.config().model,
        decode_batch=8,
        decode_prompt=128,
        decode_new=128,
        agreement_shape=tiny,
        agreement_steps=40,
        rounds=3,
        window_s=1.0,
    )


def _timed_train(
    name: str,
    shape: Shape,
    device: jax.Device,
    plan: Plan,
    overrides: tuple[str, ...] = (),
    marker: str | None = None,
) -> dict[str, Any]:
    """Compile `shape`'s train step, skip it if it would not fit, else time it: step time, tokens/s, memory.

    With `marker`, also whether the compiled program holds it (a fused kernel's custom call).
    """
    compiled = ours.compile_only(shape, devices=[device], overrides=overrides)
    need, budget = device_bytes(compiled[2]), memory_budget(device)
    record: dict[str, Any] = {"rung": shape.name, "seq_len": shape.seq_len, "batch_size": shape.batch_size}
    record |= {"compile_s": compiled[1], "memory_bytes": need}
    if marker is not None:
        # A combination a fused kernel cannot run falls back to einsum with one notice; the compiled
        # program says which one ran, so a fallback is never reported as the fused kernel's number.
        record["fused_kernel_in_program"] = marker in compiled[0].step_fn.as_text()
    if budget is not None and need > budget:
        record["skipped"] = f"needs {need / 2**30:.1f} GiB per device, over the {budget / 2**30:.1f} GiB budget"
        return record
    run = ours.start(name, shape, compiled)
    try:
        timing = interleave([run], plan.rounds, plan.window_s)[name]
    finally:
        run.release()
    record |= {"step_s": timing.step_s, "tokens_per_s": shape.tokens_per_step / timing.step_s}
    return record


def check_mfu(plan: Plan, device: jax.Device, log: Callable[[str], None]) -> dict[str, Any]:
    """The 1B rung's MFU against the datasheet peak (and the measured matmul peak), judged against the targets."""
    if device.platform == "cpu":
        log(f"mfu: {CPU_MFU_REASON}")
        return {"skipped": CPU_MFU_REASON}
    shape = plan.mfu_shape
    record = _timed_train(shape.name, shape, device, plan)
    if "skipped" in record:
        return record
    achieved = flops_per_token(shape.config().model, shape.seq_len) * record["tokens_per_s"]
    peak, source = peak_flops_per_device(None, "bfloat16")
    measured = measured_matmul_flops("bfloat16")
    mfu = achieved / peak
    verdict = "stretch met" if mfu >= MFU_STRETCH else "pass" if mfu >= MFU_TARGET else "FAIL"
    record |= {
        "achieved_flops": achieved,
        "peak_flops": peak,
        "peak_source": source,
        "mfu": mfu,
        "measured_matmul_flops": measured,
        "mfu_vs_measured_matmul": achieved / measured,
        "target": MFU_TARGET,
        "stretch": MFU_STRETCH,
        "verdict": verdict,
    }
    log(
        f"mfu {shape.name}: {record['tokens_per_s']:,.0f} tokens/s, {record['step_s'] * 1e3:.1f} ms/step, "
        f"MFU {100 * mfu:.1f}% of {source} ({100 * achieved / measured:.1f}% of the measured bf16 matmul); "
        f"target {100 * MFU_TARGET:.0f}%, stretch {100 * MFU_STRETCH:.0f}%: {verdict}"
    )
    return record


def check_attention(plan: Plan, device: jax.Device, log: Callable[[str], None]) -> dict[str, Any]:
    """Fused against XLA attention in the whole train step at each length: step time, memory, ratios."""
    fused, baseline = plan.attention_impls
    rows = []
    for shape in plan.attention_shapes:
        row: dict[str, Any] = {"seq_len": shape.seq_len, "batch_size": shape.batch_size}
        for impl in (fused, baseline):
            try:
                overrides = (f"model.attention_impl={impl}",)
                row[impl] = _timed_train(impl, shape, device, plan, overrides, FUSED_MARKERS.get(impl))
                if row[impl].get("fused_kernel_in_program") is False:
                    log(
                        f"attention {shape.seq_len} tokens: WARNING: no {impl} kernel in the compiled step (einsum ran)"
                    )
            except ConfigError as error:  # e.g. an implementation this platform or shape cannot run
                row[impl] = {"skipped": str(error)}
            except Exception as error:  # a kernel that fails to compile or run (cuDNN, out of memory): keep the other
                traceback.print_exc()  # implementation's and the other lengths' numbers, and say which one broke
                row[impl] = {"error": f"{type(error).__name__}: {error}"}
                log(f"attention {shape.seq_len} tokens: {impl} FAILED ({type(error).__name__}); the traceback is above")
        a, b = row[fused], row[baseline]
        if "step_s" in a and "step_s" in b:
            row["speedup"] = b["step_s"] / a["step_s"]  # > 1: the fused kernel is faster
        if "memory_bytes" in a and "memory_bytes" in b:
            row["memory_ratio"] = a["memory_bytes"] / b["memory_bytes"]  # < 1: the fused kernel needs less
        rows.append(row)
        log(
            f"attention {shape.seq_len} tokens: "
            + "; ".join(_attention_line(impl, row[impl]) for impl in (fused, baseline))
        )
        if "speedup" in row:
            log(f"attention {shape.seq_len} tokens: {baseline} ÷ {fused} step time {row['speedup']:.2f}")
    return {"fused": fused, "baseline": baseline, "rows": rows}


def _attention_line(impl: str, record: dict[str, Any]) -> str:
    memory = f"{record['memory_bytes'] / 2**30:.2f} GiB" if "memory_bytes" in record else "-"
    if "error" in record:
        return f"{impl} FAILED ({record['error']})"
    if "step_s" not in record:
        return f"{impl} skipped ({record['skipped']}), memory {memory}"
    return f"{impl} {record['step_s'] * 1e3:.1f} ms/step, memory {memory}"


def check_decode(plan: Plan, device: jax.Device, log: Callable[[str], None]) -> dict[str, Any]:
    """Greedy KV-cache decoding tokens/s, timed as bench/decode_bench.py times it."""
    cfg = plan.decode_model
    model = describe(cfg)
    with jax.default_device(device):
        params = jax.jit(model.init, static_argnums=0)(0)
        prompt = jax.random.randint(jax.random.key(0), (plan.decode_batch, plan.decode_prompt), 0, cfg.vocab_size)
        start = time.perf_counter()
        jax.block_until_ready(generate(cfg, model.graphdef, params, prompt, new_tokens=plan.decode_new))
        first_s = time.perf_counter() - start  # the compile, and one generation
        cached = Contender("cached", lambda: generate(cfg, model.graphdef, params, prompt, new_tokens=plan.decode_new))
        timing = interleave([cached], plan.rounds, plan.window_s)["cached"]
    tokens = plan.decode_batch * plan.decode_new
    record = {
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "dtype": cfg.dtype,
        "batch": plan.decode_batch,
        "prompt": plan.decode_prompt,
        "new_tokens": plan.decode_new,
        "first_call_s": first_s,
        "generation_s": timing.step_s,
        "tokens_per_s": tokens / timing.step_s,
        "ms_per_token_step": 1e3 * timing.step_s / plan.decode_new,  # prefill included, spread over the steps
    }
    log(
        f"decode d{cfg.d_model} x {cfg.n_layers} layers, batch {plan.decode_batch}, {plan.decode_prompt}+"
        f"{plan.decode_new} tokens: {record['tokens_per_s']:,.0f} tokens/s ({record['ms_per_token_step']:.2f} ms per step)"
    )
    return record


def loss_curve(shape: Shape, dtype: str, device: jax.Device, steps: int) -> list[float]:
    """Training losses of `steps` steps of `shape` in `dtype` on `device`, from the seed's data and parameters."""
    cfg = shape.config(dtype, overrides=("optimizer.lr=3e-3",))  # a rate at which the tiny model learns in 40 steps
    trainer = Trainer.build(cfg, [device])
    source = make_source(cfg)
    state = trainer.init_state()
    losses = []
    for step in range(steps):
        state, metrics = trainer.train_step(state, trainer.put_batch(source.batch(step)))
        losses.append(float(metrics["loss"]))
    return losses


def compare_losses(bf16: list[float], fp32: list[float], tolerance: float = AGREEMENT_TOLERANCE) -> dict[str, Any]:
    """The largest relative difference of two loss curves, step by step, and whether it is within `tolerance`."""
    if len(bf16) != len(fp32) or not bf16:
        raise ValueError(f"loss curves of {len(bf16)} and {len(fp32)} steps cannot be compared")
    relative = [abs(a - b) / abs(b) for a, b in zip(bf16, fp32, strict=True)]
    # max() skips past a NaN (every comparison with it is false), so a diverged step is found first.
    broken = [step for step, r in enumerate(relative) if not math.isfinite(r)]
    worst_step = broken[0] if broken else relative.index(max(relative))
    worst = relative[worst_step]
    return {
        "max_relative_difference": worst,
        "worst_step": worst_step,
        "final_relative_difference": relative[-1],
        "tolerance": tolerance,
        "passed": math.isfinite(worst) and worst <= tolerance,
    }


def check_agreement(plan: Plan, device: jax.Device, log: Callable[[str], None]) -> dict[str, Any]:
    """bf16 on the device against fp32 on the CPU: same model, data and seed; compare the loss curves."""
    shape, steps = plan.agreement_shape, plan.agreement_steps
    bf16 = loss_curve(shape, "bfloat16", device, steps)
    fp32 = loss_curve(shape, "float32", jax.devices("cpu")[0], steps)
    record = {"rung": shape.name, "steps": steps, "bf16_losses": bf16, "fp32_cpu_losses": fp32}
    record |= compare_losses(bf16, fp32)
    log(
        f"agreement {shape.name}, {steps} steps: loss {fp32[0]:.3f} -> {fp32[-1]:.3f} (fp32, CPU); max relative "
        f"difference of bf16 on {device.platform} {100 * record['max_relative_difference']:.2f}% at step "
        f"{record['worst_step']} (tolerance {100 * AGREEMENT_TOLERANCE:.0f}%): {'pass' if record['passed'] else 'FAIL'}"
    )
    return record


CHECKS: dict[str, Callable[[Plan, jax.Device, Callable[[str], None]], dict[str, Any]]] = {
    "mfu": check_mfu,
    "attention": check_attention,
    "decode": check_decode,
    "agreement": check_agreement,
}
