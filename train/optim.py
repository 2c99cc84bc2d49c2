"""AdamW with a masked weight decay and global-norm clipping, on the learning-rate schedule a config names.

Under `model.parametrization: mup` the hidden matrices learn at lr * base/width (model/mup.py):
their whole AdamW step, the decoupled decay included, is scaled, as if their parameter group had
that learning rate. Embeddings, norms, biases and the readout keep optimizer.lr, which is also the
`lr` the metrics report.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from scalelab.model.counting import EMBEDDING_AXES, is_matmul_weight
from scalelab.model.mup import lr_scales
from scalelab.train.config import Config
from scalelab.train.lr_schedules import ScheduleValues, lr_at, schedule_values


def lr_values(cfg: Config) -> ScheduleValues:
    """The run-time numbers of the config's schedule: optimizer.lr, min_lr_ratio * lr, warmup, length."""
    peak, sched = cfg.optimizer.lr, cfg.schedule
    return schedule_values(peak, peak * sched.min_lr_ratio, sched.warmup_steps, cfg.train.steps, sched.decay_fraction)


def learning_rate(cfg: Config, values: ScheduleValues | None = None) -> optax.Schedule:
    """Linear warmup to optimizer.lr, then the decay schedule.name names, down to min_lr_ratio * lr.

    `values` (traced inside a compiled step) replace the config's numbers; the shape comes from schedule.name.
    """
    values = lr_values(cfg) if values is None else values
    return lambda step: lr_at(cfg.schedule.name, values, step)


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


def scale_per_parameter(factors: Any) -> optax.GradientTransformation:
    """Multiply each parameter's update by its factor in `factors` (a tree of floats shaped like the parameters)."""

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        return jax.tree.map(lambda u, f: u if f == 1.0 else u * f, updates, factors), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def make_optimizer(cfg: Config, axes: Any, values: ScheduleValues | None = None) -> optax.GradientTransformation:
    """AdamW (decoupled, masked decay) after optional global-norm clipping; per-parameter lr factors under µP.

    `values` are the schedule's numbers as the train step's arguments (see `learning_rate`); the
    optimizer state's layout does not depend on them.
    """
    opt = cfg.optimizer
    parts = [] if opt.clip_norm is None else [clip_by_global_norm(opt.clip_norm)]
    parts.append(
        optax.adamw(
            learning_rate(cfg, values),
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            mask=decay_mask(axes, opt.decay_embeddings),
        )
    )
    factors = lr_scales(cfg.model, axes)
    if any(f != 1.0 for f in jax.tree.leaves(factors)):  # standard models keep today's chain and state
        parts.append(scale_per_parameter(factors))
    return optax.chain(*parts)
