"""AdamW with a masked weight decay, global-norm clipping and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scalelab.model.counting import EMBEDDING_AXES, is_matmul_weight
from scalelab.train.config import Config, ScheduleConfig

Decay = Callable[[jax.Array], jax.Array]


def _progress(step: jax.Array, start: int, end: int) -> jax.Array:
    return jnp.clip((step - start) / max(end - start, 1), 0.0, 1.0)


def _cosine(peak: float, floor: float, sched: ScheduleConfig, last: int) -> Decay:
    return lambda step: (
        floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * _progress(step, sched.warmup_steps, last)))
    )


def _linear(peak: float, floor: float, sched: ScheduleConfig, last: int) -> Decay:
    return lambda step: peak + (floor - peak) * _progress(step, sched.warmup_steps, last)


def _constant(peak: float, floor: float, sched: ScheduleConfig, last: int) -> Decay:
    return lambda step: jnp.full_like(step, peak)


def _warmup_stable_decay(peak: float, floor: float, sched: ScheduleConfig, last: int) -> Decay:
    # Hold the peak, then decay linearly over the last decay_fraction of training.
    decay_start = int((last + 1) * (1.0 - sched.decay_fraction))
    return lambda step: peak + (floor - peak) * _progress(step, decay_start, last)


# What follows the linear warmup, by schedule.name.
DECAYS: dict[str, Callable[[float, float, ScheduleConfig, int], Decay]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
    "wsd": _warmup_stable_decay,
}


def learning_rate(cfg: Config) -> optax.Schedule:
    """Linear warmup to optimizer.lr, then the named decay down to min_lr_ratio * lr."""
    peak, sched, steps = cfg.optimizer.lr, cfg.schedule, cfg.train.steps
    # The decay ends at the last step trained (steps - 1), which therefore uses the floor.
    after_warmup = DECAYS[sched.name](peak, peak * sched.min_lr_ratio, sched, steps - 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warmup = peak * (step + 1) / max(sched.warmup_steps, 1)
        return jnp.where(step < sched.warmup_steps, warmup, after_warmup(step)).astype(jnp.float32)

    return schedule


def decay_mask(axes: Any, decay_embeddings: bool) -> Any:
    """True for parameters that get weight decay: matrices, and embeddings only if asked."""

    def decays(spec) -> bool:
        if set(spec) & set(EMBEDDING_AXES):
            return decay_embeddings
        return is_matmul_weight(tuple(spec))

    return jax.tree.map(decays, axes)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale the gradients by min(1, max_norm / global norm): optax's clip, as one scalar factor.

    optax divides every element by the norm. XLA counts a divide as too costly to repeat in each
    consumer, so it writes the whole clipped gradient out and reads it back for each Adam
    moment; a multiply by a scalar fuses into them instead (about 8 bytes a parameter per step).
    """

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        norm = optax.tree.norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def make_optimizer(cfg: Config, axes: Any) -> optax.GradientTransformation:
    """AdamW (decoupled, masked decay) after optional global-norm clipping."""
    opt = cfg.optimizer
    parts = [] if opt.clip_norm is None else [clip_by_global_norm(opt.clip_norm)]
    parts.append(
        optax.adamw(
            learning_rate(cfg),
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            mask=decay_mask(axes, opt.decay_embeddings),
        )
    )
    return optax.chain(*parts)
