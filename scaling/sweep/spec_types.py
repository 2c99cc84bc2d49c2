"""What a loaded sweep spec holds: the family rule, the per-size rules, the run sets and the branches.

Each type checks its own fields when built, so a rule is valid wherever it was made (spec.py parses YAML
into them; tests and the planner build them directly).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from scalelab.model.config import ConfigError

SIZE_MEASURES = ("non_embedding", "total")


class SpecError(ConfigError):
    """A sweep spec is missing, malformed or inconsistent; the message names the problem and the fix."""


def check_finite(rule: Any, key: str) -> None:
    """Raise SpecError for a NaN or infinite field of `rule`; range checks miss NaN (every comparison is false)."""
    for field in dataclasses.fields(rule):
        value = getattr(rule, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{key}.{field.name}: expected a finite number, got {value}")


@dataclasses.dataclass(frozen=True)
class FamilyRule:
    """Turns a target size into a shape: fixed width/depth ratio, head width and FFN ratio."""

    aspect_ratio: float = 32.0  # d_model / n_layers
    head_dim: int = 32  # d_model is a multiple of it; n_heads = d_model / head_dim
    # Or a fixed head count: d_model steps by 2 x n_heads and head_dim = d_model / n_heads grows with width.
    # Few wide heads run faster than many narrow ones on small models, and the ladder is finer.
    n_heads: int | None = None
    ffn_multiplier: float | None = None  # None keeps the base config's
    min_layers: int = 1
    max_d_model: int = 16384  # the widest shape the rule may pick
    size: str = "non_embedding"  # the count that targets, tokens_per_param and per-size rules use

    def __post_init__(self) -> None:
        check_finite(self, "family")
        if self.aspect_ratio <= 0:
            raise SpecError(f"family.aspect_ratio must be positive (d_model per layer), got {self.aspect_ratio}")
        if self.head_dim <= 0 or self.head_dim % 2:
            raise SpecError(f"family.head_dim must be a positive even number (rotary halves), got {self.head_dim}")
        if self.n_heads is not None and self.n_heads < 1:
            raise SpecError(f"family.n_heads must be a positive number of heads, got {self.n_heads}")
        if self.ffn_multiplier is not None and self.ffn_multiplier <= 0:
            raise SpecError(f"family.ffn_multiplier must be positive, got {self.ffn_multiplier}")
        if self.min_layers < 1:
            raise SpecError(f"family.min_layers must be >= 1, got {self.min_layers}")
        if self.max_d_model < self.head_dim:
            raise SpecError(
                f"family.max_d_model ({self.max_d_model}) is below family.head_dim ({self.head_dim}); raise it"
            )
        if self.size not in SIZE_MEASURES:
            raise SpecError(f"family.size: unknown value {self.size!r}; choose one of {', '.join(SIZE_MEASURES)}")


@dataclasses.dataclass(frozen=True)
class PowerRule:
    """A per-size value: `value * (N / ref_params) ** exponent`, clamped to [min, max], rounded to `multiple`.

    rules.lr may instead say `{from_fit: PATH}`: the rule `scalelab fit --approach lr` wrote there.
    """

    value: float
    ref_params: float = 1e6
    exponent: float = 0.0
    min: float | None = None
    max: float | None = None
    multiple: int | None = None  # round to a multiple of this (batch sizes); None: no rounding

    def check(self, key: str) -> None:
        """Raise SpecError if the rule cannot give a positive value."""
        check_finite(self, f"rules.{key}")
        if self.value <= 0 or self.ref_params <= 0:
            raise SpecError(f"rules.{key}: value and ref_params must be positive, got {self.value}, {self.ref_params}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise SpecError(f"rules.{key}: min ({self.min}) is above max ({self.max}); swap or fix them")
        if self.multiple is not None and self.multiple <= 0:
            raise SpecError(f"rules.{key}.multiple must be positive, got {self.multiple}")
        for bound in ("min", "max"):
            limit = getattr(self, bound)
            if self.multiple is not None and limit is not None and (limit <= 0 or limit % self.multiple):
                raise SpecError(
                    f"rules.{key}.{bound} ({limit}) is not a positive multiple of rules.{key}.multiple "
                    f"({self.multiple}); make it one so rounded values stay inside [min, max]"
                )

    def at(self, n: float) -> float:
        """The rule's value for a model of size `n`."""
        value = self.value * (n / self.ref_params) ** self.exponent
        if self.min is not None:
            value = max(value, self.min)
        if self.max is not None:
            value = min(value, self.max)
        if self.multiple is not None:
            # min and max are multiples too (see check), so rounding stays inside them
            value = max(self.multiple, round(value / self.multiple) * self.multiple)
        return value


@dataclasses.dataclass(frozen=True)
class RunRules:
    """How each run is configured from its size and length."""

    lr: PowerRule
    batch_size: PowerRule
    b2: PowerRule | None = None  # AdamW's second-moment decay per size; None keeps the base config's
    # Each cell runs once per multiplier of the lr rule: a learning-rate grid, for `scalelab fit --approach lr`.
    lr_multipliers: tuple[float, ...] = (1.0,)
    warmup_fraction: float = 0.05  # of each run's steps
    # Warmup sized to the model (Porian et al. 2024: as many tokens as parameters), instead of warmup_fraction.
    warmup_tokens_per_param: float | None = None
    evals_per_run: int = 4  # evenly spaced; the last one is at the final step
    checkpoints_per_run: int = 2  # evenly spaced; 0 turns checkpoints off
    min_steps: int = 10  # a run shorter than this is a plan-time error


@dataclasses.dataclass(frozen=True)
class IsoFlopRuns:
    """For each compute budget C, sizes spaced in log N, each trained on D = C / FLOPs-per-token(N)."""

    budgets: tuple[float, ...]
    sizes: tuple[float, ...] | None  # one ladder of sizes: each budget runs those inside tokens_per_param (all if None)
    sizes_per_budget: int | None  # or this many sizes per budget, spaced anew across tokens_per_param
    tokens_per_param: tuple[float, float] | None  # (fewest, most) D/N in each budget's size range


@dataclasses.dataclass(frozen=True)
class GridRuns:
    """Every size × every token budget D."""

    sizes: tuple[float, ...]
    tokens: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Branches:
    """WSD cooldown branches (Hägele et al. 2024): the runs of one size share a constant-lr trunk.

    Each token count branches off the trunk's checkpoint and decays its learning rate over its own
    last cooldown_fraction of steps, which is what an independent wsd run of that length trains.
    """

    cooldown_fraction: float = 0.2  # each branch's decay, as a share of its whole length

    def __post_init__(self) -> None:
        check_finite(self, "branches")
        if not 0.0 < self.cooldown_fraction < 1.0:
            raise SpecError(f"branches.cooldown_fraction must be in (0, 1), got {self.cooldown_fraction}")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A whole sweep, as loaded and checked from YAML."""

    name: str
    path: Path | None
    base: dict[str, Any]  # the base training config as a raw mapping (base: chain and config: merged)
    family: FamilyRule
    runs: IsoFlopRuns | GridRuns
    rules: RunRules
    seeds: tuple[int, ...]
    branches: Branches | None = None  # None: every run trains on its own
