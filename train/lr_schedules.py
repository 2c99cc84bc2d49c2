"""Learning-rate schedules: a linear warmup, then the decay that `schedule.name` picks from LR_SCHEDULES.

This module reads no config, so the config schema can take its list of choices from the registry
(adding a schedule is one entry here) while optim.py builds the schedule from a config.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

# The learning rate at a step (a float32 array) after warmup.
Decay = Callable[[jax.Array], jax.Array]
# (peak lr, final lr, first step after warmup, last step trained, decay_fraction) -> Decay.
DecayBuilder = Callable[[float, float, int, int, float], Decay]


def _progress(step: jax.Array, start: int, end: int) -> jax.Array:
    return jnp.clip((step - start) / max(end - start, 1), 0.0, 1.0)


def _cosine(peak: float, floor: float, start: int, last: int, decay_fraction: float) -> Decay:
    return lambda step: floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * _progress(step, start, last)))


def _linear(peak: float, floor: float, start: int, last: int, decay_fraction: float) -> Decay:
    return lambda step: peak + (floor - peak) * _progress(step, start, last)


def _constant(peak: float, floor: float, start: int, last: int, decay_fraction: float) -> Decay:
    return lambda step: jnp.full_like(step, peak)


def wsd_decay_start(steps: int, decay_fraction: float) -> int:
    """The last step of a `steps`-step wsd run that still uses the peak; the decay follows it.

    A sweep trunk trained at constant lr for this many steps is the wsd run's state at this step,
    so a branch that resumes it with the wsd schedule trains exactly what the whole run would.
    """
    return int(steps * (1.0 - decay_fraction))


def _warmup_stable_decay(peak: float, floor: float, start: int, last: int, decay_fraction: float) -> Decay:
    # Hold the peak, then decay linearly over the last decay_fraction of training.
    decay_start = wsd_decay_start(last + 1, decay_fraction)
    return lambda step: peak + (floor - peak) * _progress(step, decay_start, last)


# What follows the linear warmup, by schedule.name; the config accepts exactly these names.
LR_SCHEDULES: dict[str, DecayBuilder] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
    "wsd": _warmup_stable_decay,
}


def warmup_then_decay(
    name: str, peak: float, floor: float, warmup_steps: int, steps: int, decay_fraction: float
) -> optax.Schedule:
    """Linear warmup to `peak` over `warmup_steps`, then the decay `name` down to `floor`."""
    # The decay ends at the last step trained (steps - 1), which therefore uses the floor.
    after_warmup = LR_SCHEDULES[name](peak, floor, warmup_steps, steps - 1, decay_fraction)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warmup = peak * (step + 1) / max(warmup_steps, 1)
        return jnp.where(step < warmup_steps, warmup, after_warmup(step)).astype(jnp.float32)

    return schedule
