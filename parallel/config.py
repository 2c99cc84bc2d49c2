"""The `mesh:` config section: axis sizes, the pipeline schedule and overrides of the sharding rules."""

from __future__ import annotations

import dataclasses
from typing import Any

from scalelab.errors import ConfigError
from scalelab.parallel.pipeline_plan import PIPELINE_SCHEDULES


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes (-1: the remaining devices) and the pipeline schedule."""

    data: int = -1  # data-parallel ways (-1: the devices the other axes leave)
    fsdp: int = 1  # fully sharded data-parallel ways: parameters and optimizer state split, batch split too
    tensor: int = 1  # tensor-parallel ways: heads and the MLP hidden dimension split
    pipeline: int = 1  # pipeline stages: the stacked layers split into this many stages
    microbatches: int = 1  # pipeline: microbatches per step (more of them shrink the bubble)
    schedule: str = "gpipe"
    repeats: int | None = None  # circular: layer groups per stage (None: one layer per group)
    rules: dict[str, Any] | None = None  # overrides of the logical-to-mesh axis rules
    dcn: dict[str, Any] | None = None  # ways of each axis that span slices (DCN), e.g. {data: 2}

    def __post_init__(self) -> None:
        sizes = {key: getattr(self, key) for key in ("data", "fsdp", "tensor", "pipeline")}
        if sum(1 for v in sizes.values() if v == -1) > 1:
            raise ConfigError("mesh: at most one axis may be -1 (the remaining devices)")
        for key, value in sizes.items():
            if value == 0 or value < -1:
                raise ConfigError(f"mesh.{key} must be a positive size or -1, got {value}")
        if self.microbatches <= 0:
            raise ConfigError(f"mesh.microbatches must be positive, got {self.microbatches}")
        if self.schedule not in PIPELINE_SCHEDULES:
            raise ConfigError(
                f"mesh.schedule: unknown value {self.schedule!r}; choose one of {', '.join(PIPELINE_SCHEDULES)}"
            )
        if self.repeats is not None and self.repeats <= 0:
            raise ConfigError(f"mesh.repeats must be positive or null, got {self.repeats}")
        for key, value in (self.dcn or {}).items():
            if key not in sizes:
                raise ConfigError(f"mesh.dcn.{key}: not a mesh axis; choose from {', '.join(sizes)}")
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"mesh.dcn.{key} must be a positive integer, got {value!r}")
