"""Everything a run needs before its first step: mesh, shardings, optimizer and compiled steps."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalelab.model.axes import activation_sharding
from scalelab.model.config import ConfigError
from scalelab.model.functional import ModelDef, describe
from scalelab.model.layers import shapes_only
from scalelab.model.stack import LayerRunner
from scalelab.parallel.distributed import process_rows
from scalelab.parallel.mesh import build_mesh
from scalelab.parallel.pipeline import make_pipeline_runner
from scalelab.parallel.pipeline_plan import PipelinePlan, plan_pipeline
from scalelab.parallel.rules import (
    MeshAxes,
    activation_resolver,
    check_divisible,
    logical_to_mesh,
    make_rules,
    tree_shardings,
)
from scalelab.train.config import Config
from scalelab.train.lr_schedules import ScheduleValues
from scalelab.train.optim import lr_values, make_optimizer
from scalelab.train.stage import stage_of
from scalelab.train.steps import TrainState, make_eval_step, make_train_step

BATCH_AXES = PartitionSpec("batch", "length")
# The init program runs once. On a CPU, XLA's full optimisation of every parameter's random draws
# costs seconds of compile (gpt-tiny 4.4 s -> 2.1 s, t5-tiny 10.1 s -> 3.9 s) to save milliseconds.
RUN_ONCE_CPU_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def pipeline_plan(cfg: Config, stages: int) -> PipelinePlan | None:
    """The pipeline plan for `stages` pipeline stages (None for one), checked against the model and microbatches."""
    if stages == 1:
        if cfg.mesh.microbatches > 1:
            raise ConfigError(
                f"mesh.microbatches ({cfg.mesh.microbatches}) only applies with mesh.pipeline > 1; "
                "use train.grad_accum to split the batch without a pipeline"
            )
        return None
    return plan_pipeline(cfg.mesh, cfg.model, stages)


def _pipeline(cfg: Config, mesh: Mesh, rules: dict[str, MeshAxes]) -> tuple[PipelinePlan | None, LayerRunner | None]:
    """The pipeline plan and its layer runner when the mesh has a pipeline axis, else (None, None)."""
    plan = pipeline_plan(cfg, mesh.shape["pipeline"])
    return (None, None) if plan is None else (plan, make_pipeline_runner(plan, mesh, rules))


def check_batch(cfg: Config, batch_sharding: NamedSharding, pipeline: PipelinePlan | None) -> None:
    """Each gradient-accumulation step, and each pipeline microbatch of it, must split evenly over the batch axes."""
    rows, what = cfg.train.batch_size // cfg.train.grad_accum, "train.batch_size"
    if cfg.train.grad_accum > 1:
        what += " / train.grad_accum"
    if pipeline is not None:
        if rows % pipeline.microbatches:
            raise ConfigError(
                f"{what} ({rows}) is not divisible by mesh.microbatches ({pipeline.microbatches}); "
                "change mesh.microbatches to a divisor of it, or train.batch_size"
            )
        rows, what = rows // pipeline.microbatches, f"{what} / mesh.microbatches"
    mesh = batch_sharding.mesh
    fix = "change train.batch_size (or the mesh's data and fsdp sizes)"
    check_divisible((rows, cfg.train.seq_len), batch_sharding.spec, mesh, "the batch", (what, "train.seq_len"), fix)


def _with_axis_rules(fn, resolver):
    """Trace `fn` with activation constraints resolved by `resolver`."""

    def traced(*args):
        with activation_sharding(resolver):
            return fn(*args)

    return traced


@dataclasses.dataclass
class Trainer:
    """The static parts of a run, built once from its config."""

    cfg: Config
    mesh: Mesh
    rules: dict[str, MeshAxes]
    model: ModelDef
    tx: optax.GradientTransformation  # on the config's schedule: its state layout is every run's
    lr_values: ScheduleValues  # the schedule's numbers, an argument of the compiled step (train/steps.py)
    state_shardings: Any
    batch_sharding: NamedSharding
    step_fn: Any  # jitted (state, batch, lr_values) -> (state, metrics); compiled by `compile`
    eval_step: Any  # jitted (params, batch) -> sums
    pipeline: PipelinePlan | None = None  # None without pipeline parallelism

    @classmethod
    def build(cls, cfg: Config, devices: list[jax.Device] | None = None) -> Trainer:
        """Build the mesh, shardings, optimizer and jitted steps for `cfg`."""
        mesh = build_mesh(cfg.mesh, devices)
        rules = make_rules(cfg.mesh.rules)
        pipeline, runner = _pipeline(cfg, mesh, rules)  # first: its layer-split errors are the most specific
        stage = stage_of(cfg)  # a post-training stage may wrap the model and replace the loss
        model = describe(cfg.model) if stage is None else stage.model(cfg, describe(cfg.model))
        loss = None if stage is None else stage.loss(cfg, model, runner)
        sums = None if stage is None else stage.eval(cfg, model, runner)
        tx = make_optimizer(cfg, model.axes)
        replicated = NamedSharding(mesh, PartitionSpec())
        param_shardings = tree_shardings(model.axes, model.shapes, rules, mesh)
        abstract_opt = jax.eval_shape(tx.init, model.shapes)
        opt_shardings = optax.tree_map_params(
            tx,
            lambda _, sharding: sharding,
            abstract_opt,
            param_shardings,
            transform_non_params=lambda _: replicated,
            is_leaf=lambda x: isinstance(x, NamedSharding),
        )
        state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings}
        batch_sharding = NamedSharding(mesh, logical_to_mesh(BATCH_AXES, rules, mesh))
        check_batch(cfg, batch_sharding, pipeline)
        resolver = activation_resolver(rules, mesh)
        optimizer = functools.partial(make_optimizer, cfg, model.axes)
        step_fn = jax.jit(
            _with_axis_rules(make_train_step(cfg, model, optimizer, runner=runner, loss=loss), resolver),
            in_shardings=(state_shardings, batch_sharding, replicated),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        )
        values = jax.device_put(lr_values(cfg), replicated)
        evaluate = make_eval_step(model, runner, sums, cfg.train.qat_bits, cfg.train.qat_group_size)
        eval_step = jax.jit(
            _with_axis_rules(evaluate, resolver),
            in_shardings=(param_shardings, batch_sharding),
            out_shardings=replicated,
        )
        return cls(cfg, mesh, rules, model, tx, values, state_shardings, batch_sharding, step_fn, eval_step, pipeline)

    def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step: (state, batch) -> (new state, metrics). Donates `state`."""
        return self.step_fn(state, batch, self.lr_values)

    def lower(self, state: TrainState, batch: dict[str, jax.Array]) -> jax.stages.Lowered:
        """The train step lowered for these arguments (abstract ones will do), to compile or inspect."""
        return self.step_fn.lower(state, batch, self.lr_values)

    def data_shard(self) -> tuple[int, int]:
        """(index, count) of the batch rows this process feeds: its devices' rows and no others."""
        return process_rows(self.batch_sharding, (self.cfg.train.batch_size, self.cfg.train.seq_len))

    def _init_fn(self) -> TrainState:
        params = self.model.init(self.cfg.train.seed)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}

    def init_state(self) -> TrainState:
        """Fresh parameters and optimizer state, created directly in their shardings."""
        init = jax.jit(self._init_fn, out_shardings=self.state_shardings)
        if self.mesh.devices.flat[0].platform != "cpu":
            return init()
        return init.lower().compile(RUN_ONCE_CPU_OPTIONS)()

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs (with shardings) of the train state, for restoring checkpoints."""
        with shapes_only():  # the random draws are not needed for shapes, and tracing them is slow
            shapes = jax.eval_shape(self._init_fn)
        return jax.tree.map(
            lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            shapes,
            self.state_shardings,
        )

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assemble this process's rows into global arrays sharded over the batch axes."""
        return {
            key: jax.make_array_from_process_local_data(
                self.batch_sharding, value, (self.cfg.train.batch_size, *value.shape[1:])
            )
            for key, value in local_batch.items()
        }

    def compile(
        self, state: TrainState, batch: dict[str, jax.Array], compiler_options: dict[str, Any] | None = None
    ) -> tuple[float, dict[str, int]]:
        """Compile the train step ahead of time and use it; return (seconds, per-device memory in bytes).

        `compiler_options` are XLA options for this one compilation (e.g. a faster, less optimised build).
        """
        start = time.perf_counter()
        compiled = self.lower(state, batch).compile(compiler_options=compiler_options)
        seconds = time.perf_counter() - start
        self.step_fn = compiled
        memory: dict[str, int] = {}
        analysis = compiled.memory_analysis()
        if analysis is not None:
            for field in (
                "argument_size_in_bytes",
                "output_size_in_bytes",
                "alias_size_in_bytes",
                "temp_size_in_bytes",
            ):
                memory[field.removesuffix("_size_in_bytes")] = int(getattr(analysis, field, 0))
        return seconds, memory


def device_bytes(memory: dict[str, int]) -> int:
    """Bytes one device holds while the compiled step runs: inputs, outputs and temporaries,
    counting donated buffers that outputs reuse (aliases) once."""
    return memory.get("argument", 0) + memory.get("output", 0) - memory.get("alias", 0) + memory.get("temp", 0)
