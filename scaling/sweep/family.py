"""The family rule's ladder of shapes, and the sizes each isoFLOP budget or size list picks from it.

Every size and FLOP figure comes from model.counting, the counter that MFU and the fits use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from scalelab.data.objectives import model_lengths
from scalelab.model.config import ModelConfig
from scalelab.model.counting import ParamCounts, count_params, flops_per_token
from scalelab.scaling.sweep.spec_types import SpecError, SweepSpec
from scalelab.train.config import Config


class Family:
    """The shapes a family rule builds: width k·head_dim (or k·2·n_heads), depth width/aspect_ratio, by size."""

    def __init__(self, spec: SweepSpec, base: Config):
        self.rule = spec.family
        self.base = base.model
        self.seq_len = base.train.seq_len
        self.lengths = model_lengths(base)  # what a row puts through the model under the objective
        # a fixed head count steps d_model by 2 x n_heads (rotary needs an even head_dim); else by head_dim
        self.unit = self.rule.head_dim if self.rule.n_heads is None else 2 * self.rule.n_heads
        self.widths = self.rule.max_d_model // self.unit  # ladder rungs 1..widths

    def model(self, k: int) -> ModelConfig:
        """The model config of rung `k` (d_model = k × the ladder's unit)."""
        d_model = k * self.unit
        heads = self.rule.n_heads or k
        n_layers = max(self.rule.min_layers, round(d_model / self.rule.aspect_ratio))
        return dataclasses.replace(
            self.base,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=heads,
            head_dim=d_model // heads,  # explicit, as muP needs it
            n_kv_heads=None,
            d_ff=None,
            ffn_multiplier=self.rule.ffn_multiplier or self.base.ffn_multiplier,
        )

    def counts(self, k: int) -> ParamCounts:
        """Exact parameter counts of rung `k`."""
        return count_params(self.model(k))

    def size(self, k: int) -> int:
        """N of rung `k` under the spec's size measure."""
        counts = self.counts(k)
        return counts.non_embedding if self.rule.size == "non_embedding" else counts.total

    def fpt(self, k: int) -> float:
        """Training FLOPs per token of rung `k`."""
        return flops_per_token(self.model(k), self.seq_len, self.lengths)

    def tokens_per_param(self, k: int, budget: float) -> float:
        """D/N of rung `k` trained on `budget` FLOPs."""
        return budget / self.fpt(k) / self.size(k)

    def describe(self, k: int) -> str:
        """A rung in words, for error messages."""
        model = self.model(k)
        return f"d_model={model.d_model}, n_layers={model.n_layers} (N={self.size(k):,})"

    def first(self, predicate: Callable[[int], bool]) -> int | None:
        """The smallest rung where a predicate that is monotone in size turns true (binary search)."""
        low, high = 1, self.widths
        if not predicate(high):
            return None
        while low < high:
            middle = (low + high) // 2
            if predicate(middle):
                high = middle
            else:
                low = middle + 1
        return low

    def closest(self, k: int, key: Callable[[int], float], target: float) -> int:
        """Rung `k` or `k - 1`, whichever has `key` nearer `target` in log."""
        if k <= 1:
            return k
        return min((k - 1, k), key=lambda j: abs(math.log(key(j) / target)))

    def nearest(self, target: float) -> int:
        """The rung whose size is nearest `target` in log; a target beyond the ladder is an error."""
        smallest, largest = self.size(1), self.size(self.widths)
        if target < smallest / math.sqrt(2):
            raise SpecError(
                f"size {target:.3g} is below the smallest model the family rule builds, {self.describe(1)}; "
                "raise the size, or lower family.head_dim or family.min_layers"
            )
        if target > largest * math.sqrt(2):
            raise SpecError(
                f"size {target:.3g} is above the largest model the family rule builds, {self.describe(self.widths)}; "
                "raise family.max_d_model or lower the size"
            )
        k = self.first(lambda j: self.size(j) >= target) or self.widths
        return self.closest(k, self.size, target)


def budget_sizes(family: Family, budget: float, count: int, ratios: tuple[float, float]) -> list[int]:
    """`count` rungs spaced in log N between the sizes that get ratios[1] and ratios[0] tokens per parameter."""
    fewest, most = ratios

    def ratio(k: int) -> float:
        return family.tokens_per_param(k, budget)

    if ratio(1) < most:
        needed = most * family.size(1) * family.fpt(1)
        raise SpecError(
            f"budget {budget:.3g} FLOPs is too small for the smallest model, {family.describe(1)}: it affords only "
            f"{ratio(1):.3g} tokens per parameter, below tokens_per_param max {most:g}; raise the budget to at least "
            f"{needed:.3g}, or lower tokens_per_param max or family.head_dim"
        )
    large = family.first(lambda k: ratio(k) <= fewest)
    if large is None:
        raise SpecError(
            f"budget {budget:.3g} FLOPs is too large for the family rule: its largest model, "
            f"{family.describe(family.widths)}, still gets {ratio(family.widths):.3g} tokens per parameter, above "
            f"tokens_per_param min {fewest:g}; raise family.max_d_model or lower the budget"
        )
    large = family.closest(large, ratio, fewest)
    small = family.closest(family.first(lambda k: ratio(k) <= most) or large, ratio, most)
    if large - small + 1 < count:
        raise SpecError(
            f"budget {budget:.3g}: sizes_per_budget={count}, but only {large - small + 1} distinct shapes lie "
            f"between {family.describe(small)} and {family.describe(large)} (duplicate runs); widen "
            "tokens_per_param, lower family.head_dim for a finer ladder, or ask for fewer sizes"
        )
    low, high = math.log(family.size(small)), math.log(family.size(large))
    if count == 1:
        targets = [math.exp((low + high) / 2)]
    else:
        targets = [math.exp(low + (high - low) * i / (count - 1)) for i in range(count)]
    rungs: list[int] = []
    for i, target in enumerate(targets):
        # the nearest rung (size is monotone in k, so clamping keeps it nearest) that lies above the
        # previous pick and leaves one rung for each later size: distinct shapes, as log-even as the ladder allows
        first, last = (rungs[-1] + 1 if rungs else small), large - (count - 1 - i)
        rungs.append(min(max(family.nearest(target), first), last))
    return rungs


def fixed_sizes(family: Family, sizes: Sequence[float]) -> list[tuple[float, int]]:
    """(target, rung) per size; two sizes that build the same shape are duplicate runs."""
    chosen: dict[int, float] = {}
    for target in sizes:
        k = family.nearest(target)
        if k in chosen:
            raise SpecError(
                f"sizes {chosen[k]:.3g} and {target:.3g} both build {family.describe(k)}, which plans duplicate "
                "runs; space the sizes further apart, or lower family.head_dim for a finer ladder"
            )
        chosen[k] = target
    return [(target, k) for k, target in chosen.items()]


def window_sizes(
    family: Family, budget: float, cells: list[tuple[float, int]], window: tuple[float, float] | None
) -> list[tuple[float, int]]:
    """The cells of one ladder that budget `budget` runs: those whose D/N lies inside `window` (all if None).

    One ladder cut by a tokens-per-parameter window keeps each budget's sizes around its optimum, while
    a size shared by neighbouring budgets still trains one trunk under branches.
    """
    if window is None:
        return cells
    fewest, most = window
    kept = [(target, k) for target, k in cells if fewest <= family.tokens_per_param(k, budget) <= most]
    if not kept:
        ratios = ", ".join(f"{family.size(k):,}: {family.tokens_per_param(k, budget):.3g}" for _, k in cells)
        raise SpecError(
            f"budget {budget:.3g} FLOPs runs none of the sizes: their tokens per parameter ({ratios}) all lie outside "
            f"tokens_per_param [{fewest:g}, {most:g}]; add sizes near this budget, widen the window, or drop the budget"
        )
    return kept
