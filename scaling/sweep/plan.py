"""Planning: the family rule's shape ladder, isoFLOP and grid cells, per-size rules, and shards.

Every size and FLOP figure comes from model.counting, the counter that MFU and the fits use, so
C = flops_per_token(N) × D holds exactly for each planned run (D is whole steps of tokens).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from scalelab.data.objectives import model_lengths
from scalelab.model.config import ConfigError, ModelConfig
from scalelab.model.counting import ParamCounts, count_params, flops_per_token
from scalelab.scaling.sweep.branches import Trunk, branch_step, on_its_own, plan_trunks
from scalelab.scaling.sweep.spec import GridRuns, SpecError, SweepSpec
from scalelab.train.config import Config
from scalelab.train.config_io import config_from_dict, merge_config
from scalelab.train.lr_schedules import wsd_decay_start


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One cell of a sweep: a model shape trained for a whole number of steps."""

    name: str
    budget: float | None  # the isoFLOP budget this run belongs to; None in a grid
    target: float  # the size asked for; `size` is what the family rule could build
    size: int  # N under family.size (the count that rules and targets use)
    n_total: int
    n_nonembed: int
    flops_per_token: float  # an int for decoder models; the objective's lengths can make it fractional
    tokens: int  # D
    flops: float  # C = flops_per_token × D
    steps: int
    batch_size: int
    lr: float
    seed: int
    config: Config
    lr_multiplier: float = 1.0  # of the lr rule's value (rules.lr_multipliers: a learning-rate grid)
    trunk: str | None = None  # with branches: the trunk this run resumes from, at step branch_step
    branch_step: int | None = None

    @property
    def flops_per_step(self) -> float:
        """FLOPs of one optimizer step."""
        return self.flops_per_token * self.batch_size * self.config.train.seq_len

    @property
    def trained_flops(self) -> float:
        """FLOPs this run trains itself: all of C, or only the cooldown of a branch."""
        return self.flops if self.branch_step is None else (self.steps - self.branch_step) * self.flops_per_step

    @property
    def shape(self) -> str:
        """`d_model x n_layers`, for tables."""
        return f"{self.config.model.d_model}x{self.config.model.n_layers}"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every run of a sweep, in a fixed order, and their total compute."""

    spec: SweepSpec
    runs: tuple[PlannedRun, ...]
    trunks: tuple[Trunk, ...] = ()  # with branches: the shared constant-lr trunks

    @property
    def total_flops(self) -> float:
        """Sum of C over all runs (what independent runs would train)."""
        return sum(run.flops for run in self.runs)

    @property
    def trained_flops(self) -> float:
        """FLOPs the plan trains: with branches, each trunk once and each branch's cooldown."""
        return sum(run.trained_flops for run in self.runs) + sum(trunk.flops for trunk in self.trunks)

    def costs(self, runs: Sequence[PlannedRun]) -> dict[str, float]:
        """FLOPs each of `runs` trains when they run in this order: the first branch of a trunk trains the trunk too."""
        trunks = {trunk.name: trunk.flops for trunk in self.trunks}
        costs = {}
        for run in runs:
            costs[run.name] = run.trained_flops + trunks.pop(run.trunk, 0.0) if run.trunk else run.flops
        return costs


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


def _compact(value: float) -> str:
    """3 significant figures without '+', for run names (2e12, 3.16e12, 5e05 -> 5e5)."""
    text = f"{value:.3g}".replace("+", "")
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def _budget_sizes(family: Family, budget: float, count: int, ratios: tuple[float, float]) -> list[int]:
    """`count` rungs spaced in log N between the sizes that get ratios[1] and ratios[0] tokens per parameter."""
    fewest, most = ratios

    def ratio(k: int) -> float:
        return budget / family.fpt(k) / family.size(k)

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


def _fixed_sizes(family: Family, sizes: Sequence[float]) -> list[tuple[float, int]]:
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


def warmup_steps(spec: SweepSpec, size: int, steps: int, tokens_per_step: int) -> int:
    """A run's warmup: sized to the model (rules.warmup_tokens_per_param) or a share of its steps."""
    per_param = spec.rules.warmup_tokens_per_param
    if per_param is None:
        return round(spec.rules.warmup_fraction * steps)
    return round(per_param * size / tokens_per_step)


def _run_config(
    spec: SweepSpec,
    name: str,
    model: ModelConfig,
    steps: int,
    batch: int,
    lr: float,
    size: int,
    seq_len: int,
    seed: int,
) -> Config:
    """The training config of one run: the base config with the planned shape, length and per-size rules."""
    rules = spec.rules
    shape = {
        key: getattr(model, key)
        for key in ("d_model", "n_layers", "n_heads", "head_dim", "n_kv_heads", "d_ff", "ffn_multiplier")
    }
    warmup = warmup_steps(spec, size, steps, batch * seq_len)
    update: dict[str, Any] = {
        "name": name,
        "model": shape,
        "train": {"steps": steps, "batch_size": batch, "seed": seed, "eval_every": -(-steps // rules.evals_per_run)},
        "optimizer": {"lr": lr},
        "schedule": {"warmup_steps": warmup},
        "checkpoint": {"every": -(-steps // rules.checkpoints_per_run) if rules.checkpoints_per_run else 0},
    }
    if rules.b2 is not None:
        update["optimizer"]["b2"] = rules.b2.at(size)
    if spec.branches is not None:
        # A wsd run; its trunk (branches.py) trains the constant part once for every run of this size.
        fraction = spec.branches.cooldown_fraction
        update["schedule"] = {"name": "wsd", "decay_fraction": fraction, "warmup_steps": warmup}
        update["checkpoint"] = {"every": 0, "at_steps": [wsd_decay_start(steps, fraction)]}
    try:
        return config_from_dict(merge_config(spec.base, update))
    except ConfigError as error:
        raise SpecError(f"run {name}: {error}; fix the base config or the rules") from None


def _cells(
    spec: SweepSpec, family: Family, cell: tuple[float, int], tokens: float, budget: float | None
) -> list[PlannedRun]:
    """The runs of one (target, rung) cell: one per seed and learning-rate multiplier."""
    return [
        _cell(spec, family, cell, tokens, budget, seed, multiplier)
        for multiplier in spec.rules.lr_multipliers
        for seed in spec.seeds
    ]


def _cell(
    spec: SweepSpec,
    family: Family,
    cell: tuple[float, int],
    tokens: float,
    budget: float | None,
    seed: int,
    multiplier: float,
) -> PlannedRun:
    """Plan one run of the (target, rung) `cell` on about `tokens` tokens."""
    target, k = cell
    size = family.size(k)
    batch = int(spec.rules.batch_size.at(size))
    lr = spec.rules.lr.at(size) * multiplier
    seq_len = family.seq_len
    steps = round(tokens / (batch * seq_len))
    fpt = family.fpt(k)
    if steps < spec.rules.min_steps:
        needed_tokens = spec.rules.min_steps * batch * seq_len
        what = f"budget {budget:.3g} FLOPs" if budget is not None else f"token budget {tokens:.3g}"
        need = f"{needed_tokens * fpt:.3g} FLOPs" if budget is not None else f"{needed_tokens:.3g} tokens"
        raise SpecError(
            f"{what} is too small for {family.describe(k)}: {tokens:.3g} tokens are {steps} steps of "
            f"batch {batch} x seq_len {seq_len}, under rules.min_steps={spec.rules.min_steps}; raise it to at "
            f"least {need}, drop this size, or lower rules.batch_size"
        )
    model = family.model(k)
    kind = f"iso-C{_compact(budget)}" if budget is not None else f"grid-D{_compact(tokens)}"
    lr_part = f"-lr{_compact(multiplier)}x" if len(spec.rules.lr_multipliers) > 1 else ""
    name = f"{kind}-d{model.d_model}l{model.n_layers}{lr_part}-s{seed}"
    counts = family.counts(k)
    d = steps * batch * seq_len
    return PlannedRun(
        name=name,
        budget=budget,
        target=target,
        size=size,
        n_total=counts.total,
        n_nonembed=counts.non_embedding,
        flops_per_token=fpt,
        tokens=d,
        flops=fpt * d,
        steps=steps,
        batch_size=batch,
        lr=lr,
        seed=seed,
        config=_run_config(spec, name, model, steps, batch, lr, size, seq_len, seed),
        lr_multiplier=multiplier,
    )


def make_plan(spec: SweepSpec) -> Plan:
    """Every run of `spec`, checked: a bad budget, size list or rule is a SpecError before any compute."""
    try:
        base = config_from_dict(spec.base)
    except ConfigError as error:
        raise SpecError(f"base config: {error}") from None
    family = Family(spec, base)
    runs: list[PlannedRun] = []
    if isinstance(spec.runs, GridRuns):
        for tokens in spec.runs.tokens:
            for cell in _fixed_sizes(family, spec.runs.sizes):
                runs += _cells(spec, family, cell, tokens, None)
    else:
        iso = spec.runs
        for budget in iso.budgets:
            if iso.sizes is not None:
                cells = _fixed_sizes(family, iso.sizes)
            else:
                rungs = _budget_sizes(family, budget, iso.sizes_per_budget, iso.tokens_per_param)
                cells = [(float(family.size(k)), k) for k in rungs]
            for cell in cells:
                tokens = budget / family.fpt(cell[1])
                runs += _cells(spec, family, cell, tokens, budget)
    seen: dict[str, PlannedRun] = {}
    for run in runs:
        if run.name in seen:
            raise SpecError(f"run {run.name} is planned twice (duplicate runs); remove the repeated budget or size")
        seen[run.name] = run
    if spec.branches is None:
        return Plan(spec, tuple(runs))
    trunks = plan_trunks(spec, runs, {run.name: run.flops_per_step for run in runs})
    trunk_of = {name: trunk.name for trunk in trunks for name in trunk.runs}
    per_run = spec.rules.checkpoints_per_run
    runs = [
        dataclasses.replace(run, trunk=trunk_of[run.name], branch_step=branch_step(run.config))
        if run.name in trunk_of
        else dataclasses.replace(run, config=on_its_own(run.config, -(-run.steps // per_run) if per_run else 0))
        for run in runs
    ]
    return Plan(spec, tuple(runs), tuple(trunks))


def parse_shard(text: str) -> tuple[int, int]:
    """`i/k` (0 <= i < k) -> (i, k); anything else is a SpecError that shows the form."""
    index, _, count = text.partition("/")
    try:
        i, k = int(index), int(count)
    except ValueError:
        raise SpecError(f"--shard {text!r}: expected i/k with whole numbers, e.g. 0/4 (shards count from 0)") from None
    if k < 1 or not 0 <= i < k:
        raise SpecError(f"--shard {text!r}: need k >= 1 and 0 <= i < k, e.g. 0/4 ... 3/4 (shards count from 0)")
    return i, k


def shard_runs(runs: Sequence[PlannedRun], index: int, count: int) -> list[PlannedRun]:
    """Shard `index` of `count`: each run in exactly one shard, compute balanced greedily, plan order kept.

    Every shard computes the same assignment (largest C first to the least-loaded shard, ties to the
    lowest shard), so independent jobs agree without talking to each other. The branches of one trunk
    go to one shard, which trains the trunk once.
    """
    units: dict[str, float] = {}  # a trunk (with its branches) or an independent run -> its compute
    for run in runs:
        key = run.trunk or run.name
        units[key] = units.get(key, 0.0) + (run.flops if run.trunk is None else run.steps * run.flops_per_step)
    loads = [0.0] * count
    owner: dict[str, int] = {}
    for key, flops in sorted(units.items(), key=lambda item: (-item[1], item[0])):
        target = min(range(count), key=lambda s: (loads[s], s))
        owner[key] = target
        loads[target] += flops
    return [run for run in runs if owner[run.trunk or run.name] == index]
