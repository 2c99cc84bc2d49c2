"""Learning-rate schedules: a linear warmup, then the decay that `schedule.name` picks from LR_SCHEDULES.

This module reads no config, so the config schema can take its list of choices from the registry
(adding a schedule is one entry here) while optim.py builds the schedule from a config. It imports
JAX only inside the schedules, when a train step is traced: validating a config imports this module,
and a mistyped config should be reported before JAX has loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import jax

# The learning rate at a step (a float32 array) after warmup.
Decay = Callable[["jax.Array"], "jax.Array"]
# ScheduleValues -> Decay. The values may be traced arrays: a compiled train step takes them as
# arguments, so runs that differ only in length or learning rate share one program.
DecayBuilder = Callable[["ScheduleValues"], Decay]


class ScheduleValues(NamedTuple):
    """The numbers a schedule reads at run time: peak and floor lr, warmup, last step, wsd's decay start."""

    peak: Any
    floor: Any
    warmup: Any  # steps of linear warmup; the decay starts after them
    last: Any  # the last step trained, which uses the floor
    decay_start: Any  # wsd: the last step at the peak


def schedule_values(peak: float, floor: float, warmup_steps: int, steps: int, decay_fraction: float) -> ScheduleValues:
    """The run-time numbers of a `steps`-step schedule, as float32 scalars."""
    values = (peak, floor, warmup_steps, steps - 1, wsd_decay_start(steps, decay_fraction))
    return ScheduleValues(*(np.float32(v) for v in values))


def _progress(step: jax.Array, start: Any, end: Any) -> jax.Array:
    import jax.numpy as jnp

    return jnp.clip((step - start) / jnp.maximum(end - start, 1.0), 0.0, 1.0)


def _cosine(v: ScheduleValues) -> Decay:
    import jax.numpy as jnp

    return lambda step: v.floor + (v.peak - v.floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * _progress(step, v.warmup, v.last)))


def _linear(v: ScheduleValues) -> Decay:
    return lambda step: v.peak + (v.floor - v.peak) * _progress(step, v.warmup, v.last)


def _constant(v: ScheduleValues) -> Decay:
    import jax.numpy as jnp

    return lambda step: jnp.full_like(step, v.peak)


def wsd_decay_start(steps: int, decay_fraction: float) -> int:
    """The last step of a `steps`-step wsd run that still uses the peak; the decay follows it.

    A sweep trunk trained at constant lr for this many steps is the wsd run's state at this step,
    so a branch that resumes it with the wsd schedule trains exactly what the whole run would.
    """
    return int(steps * (1.0 - decay_fraction))


def _warmup_stable_decay(v: ScheduleValues) -> Decay:
    # Hold the peak, then decay linearly over the last decay_fraction of training.
    return lambda step: v.peak + (v.floor - v.peak) * _progress(step, v.decay_start, v.last)


# What follows the linear warmup, by schedule.name; the config accepts exactly these names.
LR_SCHEDULES: dict[str, DecayBuilder] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
    "wsd": _warmup_stable_decay,
}


def lr_at(name: str, values: ScheduleValues, step: Any) -> jax.Array:
    """The learning rate at `step`: a linear warmup to the peak, then the decay `name`, down to the floor."""
    import jax.numpy as jnp

    step = jnp.asarray(step, jnp.float32)
    warmup = values.peak * (step + 1) / jnp.maximum(values.warmup, 1.0)
    return jnp.where(step < values.warmup, warmup, LR_SCHEDULES[name](values)(step)).astype(jnp.float32)
