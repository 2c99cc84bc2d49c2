"""The pipeline plan: how many layer groups each stage holds under `mesh.schedule`, checked against the model.

Plain Python, so that the config (`mesh.schedule` is chosen from PIPELINE_SCHEDULES) can be read
without importing JAX; parallel/pipeline.py runs the plan.
"""

from __future__ import annotations

import dataclasses

from scalelab.model.config import ConfigError, ModelConfig


@dataclasses.dataclass(frozen=True)
class PipelinePlan:
    """How the layers and microbatches of one step are laid out over the pipeline stages."""

    stages: int
    repeats: int  # layer groups per stage; 1 for GPipe
    microbatches: int
    n_layers: int
    schedule: str

    @property
    def layers_per_group(self) -> int:
        """Consecutive layers a stage runs each time a microbatch visits it."""
        return self.n_layers // (self.stages * self.repeats)

    @property
    def iterations(self) -> int:
        """Loop iterations per forward pass: every item plus the fill and drain of the pipe."""
        return self.microbatches * self.repeats + self.stages - 1

    @property
    def bubble(self) -> float:
        """Fraction of stage-iterations spent idle while the pipe fills and drains."""
        return (self.stages - 1) / self.iterations

    def describe(self) -> str:
        """One line for the start-up summary."""
        groups = f", {self.repeats} groups of {self.layers_per_group} layers per stage" if self.repeats > 1 else ""
        return (
            f"{self.schedule}: {self.stages} stages x {self.n_layers // self.stages} layers{groups}, "
            f"{self.microbatches} microbatches, bubble {self.bubble:.1%}"
        )


def _gpipe_repeats(mesh_cfg, n_layers: int, stages: int) -> int:
    if mesh_cfg.repeats not in (None, 1):
        raise ConfigError(f"mesh.repeats ({mesh_cfg.repeats}) needs mesh.schedule=circular; gpipe uses 1")
    return 1


def _circular_repeats(mesh_cfg, n_layers: int, stages: int) -> int:
    # By default interleave as finely as possible: one layer per group, the smallest bubble.
    repeats = mesh_cfg.repeats or n_layers // stages
    if n_layers % (stages * repeats):
        raise ConfigError(
            f"model.n_layers ({n_layers}) is not divisible by mesh.pipeline x mesh.repeats "
            f"({stages} x {repeats} = {stages * repeats})"
        )
    if repeats > 1 and mesh_cfg.microbatches < stages:
        raise ConfigError(
            f"mesh.microbatches ({mesh_cfg.microbatches}) must be at least mesh.pipeline ({stages}) for the circular "
            "schedule: a microbatch re-enters stage 0 only after every stage has started"
        )
    return repeats


# Pipeline schedules, chosen by `mesh.schedule`: each picks the layer groups per stage (`repeats`).
# One loop runs them all; they differ only in how finely the layers interleave over the stages.
PIPELINE_SCHEDULES = {"gpipe": _gpipe_repeats, "circular": _circular_repeats}


def plan_pipeline(mesh_cfg, model_cfg: ModelConfig, stages: int) -> PipelinePlan:
    """Validate the pipeline settings against the model and return the plan (errors name both numbers)."""
    n_layers = model_cfg.n_layers
    if n_layers % stages:
        raise ConfigError(
            f"model.n_layers ({n_layers}) is not divisible by mesh.pipeline ({stages}); "
            "each stage needs the same number of layers"
        )
    repeats = PIPELINE_SCHEDULES[mesh_cfg.schedule](mesh_cfg, n_layers, stages)
    return PipelinePlan(stages, repeats, mesh_cfg.microbatches, n_layers, mesh_cfg.schedule)
