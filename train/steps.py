"""Pure train and eval steps: functions of (state, batch) that jit, shard and donate cleanly."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scalelab.model.functional import ModelDef
from scalelab.model.stack import LayerRunner
from scalelab.train.config import Config
from scalelab.train.lr_schedules import ScheduleValues, lr_at
from scalelab.train.qat import fake_quantized

TrainState = dict[str, Any]  # {"step": int32 scalar, "params": pytree, "opt_state": pytree}
Batch = Mapping[str, jax.Array]


def cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Weighted mean next-token cross-entropy in fp32 (weight 0 = padding), plus optional z-loss.

    Returns (loss to optimise, cross-entropy alone).
    """
    return _cross_entropy(float(z_loss), logits.astype(jnp.float32), targets, weights.astype(jnp.float32))


def _cross_entropy_forward(z_loss: float, logits: jax.Array, targets: jax.Array, weights: jax.Array):
    # Exponentiate once: the backward reuses these (shifted) exponentials as the softmax numerator.
    shift = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
    exps = jnp.exp(logits - shift)
    total = exps.sum(axis=-1)
    log_z = jnp.log(total) + shift[..., 0]
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    share = weights / jnp.maximum(weights.sum(), 1.0)
    ce = ((log_z - target_logit) * share).sum()
    loss = ce + z_loss * (jnp.square(log_z) * share).sum()
    return (loss, ce), (exps, total, log_z, targets, share)


def _cross_entropy_backward(z_loss: float, saved, cotangents):
    # One elementwise pass over the logits: softmax, minus the one-hot target, scaled per token.
    # Autodiff instead scatters the target term and converts in separate passes.
    exps, total, log_z, targets, share = saved
    g_loss, g_ce = cotangents
    softmax_scale = ((g_loss * (1.0 + 2.0 * z_loss * log_z) + g_ce) * share / total)[..., None]
    target_scale = ((g_loss + g_ce) * share)[..., None]
    is_target = jnp.arange(exps.shape[-1], dtype=targets.dtype) == targets[..., None]
    d_logits = exps * softmax_scale - jnp.where(is_target, target_scale, 0.0)
    return d_logits, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cross_entropy(z_loss: float, logits: jax.Array, targets: jax.Array, weights: jax.Array):
    return _cross_entropy_forward(z_loss, logits, targets, weights)[0]


_cross_entropy.defvjp(_cross_entropy_forward, _cross_entropy_backward)


def step_key(seed: int, step: jax.Array) -> jax.Array:
    """The dropout key of a step: a pure function of (seed, step), so resumes replay it exactly."""
    return jax.random.fold_in(jax.random.key(seed), step)


def _split_microbatches(batch: Batch, count: int) -> Batch:
    return {k: v.reshape(count, v.shape[0] // count, *v.shape[1:]) for k, v in batch.items()}


def make_train_step(
    cfg: Config,
    model: ModelDef,
    optimizer: Callable[[ScheduleValues], optax.GradientTransformation],
    runner: LayerRunner | None = None,
    loss: Callable[[Any, Batch, jax.Array | None], tuple[jax.Array, dict[str, jax.Array]]] | None = None,
) -> Callable[[TrainState, Batch, ScheduleValues], tuple[TrainState, dict[str, jax.Array]]]:
    """train_step(state, batch, values) -> (state, metrics) with gradient accumulation and a NaN policy.

    `values` are the learning-rate schedule's numbers (train/optim.py `lr_values`), passed at run
    time rather than baked into the program: runs of one shape that differ only in length or
    learning rate (a sweep's budgets, a learning-rate grid) then compile to the same program,
    which the persistent compilation cache serves after the first. `optimizer(values)` builds
    the optimizer on them.

    `loss(params, batch, dropout key or None)` -> (loss, metrics with "loss") replaces the
    next-token cross-entropy (a post-training stage's, train/stage.py); its metrics are logged.
    """
    z_loss, accum = cfg.train.z_loss, cfg.train.grad_accum
    use_dropout = cfg.model.dropout > 0.0

    def cross_entropy_loss(params, batch, key):
        logits = model.apply(params, batch, dropout_key=key, runner=runner)
        loss, ce = cross_entropy(logits, batch["targets"], batch["weights"], z_loss)
        return loss, {"loss": ce}

    stage_loss = loss or cross_entropy_loss

    qat_bits, qat_group = cfg.train.qat_bits, cfg.train.qat_group_size

    def loss_fn(params, batch, key):
        # Quantization-aware training: the forward pass sees the weights on their grid, and the gradient
        # passes straight through the rounding to the fp32 weights (train/qat.py).
        params = fake_quantized(params, model.axes, qat_bits, qat_group)
        return stage_loss(params, batch, key if use_dropout else None)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated_grads(params, batch, key):
        if accum == 1:
            (loss, ce), grads = grad_fn(params, batch, key)
            return loss, ce, grads

        # Weight each microbatch by its share of loss-bearing tokens so the sum equals the full-batch mean.
        micro = _split_microbatches(batch, accum)
        total = jnp.maximum(batch["weights"].sum(), 1.0)

        def body(carry, xs):
            mb, index = xs
            share = jnp.maximum(mb["weights"].sum(), 1.0) / total
            (loss, ce), grads = grad_fn(params, mb, jax.random.fold_in(key, index))
            acc_loss, acc_ce, acc_grads = carry
            acc_grads = jax.tree.map(lambda a, g: a + share * g, acc_grads, grads)
            acc_ce = jax.tree.map(lambda a, m: a + share * m, acc_ce, ce)
            return (acc_loss + share * loss, acc_ce, acc_grads), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        metric_shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda v: v[0], micro), key)[0][1]
        zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes)
        (loss, ce, grads), _ = jax.lax.scan(body, (0.0, zero_metrics, zeros), (micro, jnp.arange(accum)))
        return loss, ce, grads

    def train_step(state: TrainState, batch: Batch, values: ScheduleValues) -> tuple[TrainState, dict[str, jax.Array]]:
        step, params, opt_state = state["step"], state["params"], state["opt_state"]
        tx = optimizer(values)
        loss, ce, grads = accumulated_grads(params, batch, step_key(cfg.train.seed, step))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if cfg.train.nan_policy == "skip":
            # Drop a non-finite update entirely: parameters and optimizer moments stay as they were.
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
            new_params, new_opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
        metrics = {
            **ce,
            "total_loss": loss,
            "grad_norm": grad_norm,
            "lr": lr_at(cfg.schedule.name, values, step),
            "finite": finite,
        }
        return {"step": step + 1, "params": new_params, "opt_state": new_opt_state}, metrics

    return train_step


def make_eval_step(
    model: ModelDef,
    runner: LayerRunner | None = None,
    sums: Callable[[Any, Batch], dict[str, jax.Array]] | None = None,
    qat_bits: int = 0,
    qat_group_size: int = 0,
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """eval_step(params, batch) -> {"loss_sum", "weight_sum"}, summed so batches combine exactly.

    `sums(params, batch)` replaces it with a post-training stage's sums (train/stage.py). With
    `qat_bits` (train.qat_bits) the weights are evaluated on the grid the training loss sees, so a
    QAT run's eval loss is the quantized model's, the one it is trained to be.
    """

    def cross_entropy_sums(params, batch: Batch) -> dict[str, jax.Array]:
        logits = model.apply(params, batch, runner=runner)
        _, ce = cross_entropy(logits, batch["targets"], batch["weights"])
        weight_sum = batch["weights"].astype(jnp.float32).sum()
        return {"loss_sum": ce * jnp.maximum(weight_sum, 1.0), "weight_sum": weight_sum}

    stage_sums = sums or cross_entropy_sums
    if not qat_bits:
        return stage_sums

    def eval_step(params, batch: Batch) -> dict[str, jax.Array]:
        return stage_sums(fake_quantized(params, model.axes, qat_bits, qat_group_size), batch)

    return eval_step
