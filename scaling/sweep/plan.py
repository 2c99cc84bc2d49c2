"""Planning: isoFLOP and grid cells on the family rule's ladder (family.py), per-size rules, and shards.

Every size and FLOP figure comes from model.counting, the counter that MFU and the fits use, so
C = flops_per_token(N) × D holds exactly for each planned run (D is whole steps of tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from scalelab.model.config import ConfigError, ModelConfig
from scalelab.scaling.sweep.branches import Trunk, branch_step, on_its_own, plan_trunks
from scalelab.scaling.sweep.family import Family, budget_sizes, fixed_sizes, window_sizes
from scalelab.scaling.sweep.spec_types import GridRuns, IsoFlopRuns, SpecError, SweepSpec
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


def _compact(value: float) -> str:
    """3 significant figures without '+', for run names (2e12, 3.16e12, 5e05 -> 5e5)."""
    text = f"{value:.3g}".replace("+", "")
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


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
        where = f"{spec.path}: " if spec.path else ""
        raise SpecError(
            f"{where}the base config with the spec's config: overrides: {error} (fix it under config: in the spec, "
            "or in the base config it names)"
        ) from None
    family = Family(spec, base)
    runs: list[PlannedRun] = []
    if isinstance(spec.runs, GridRuns):
        for tokens in spec.runs.tokens:
            for cell in fixed_sizes(family, spec.runs.sizes):
                runs += _cells(spec, family, cell, tokens, None)
    else:
        iso = spec.runs
        for budget in iso.budgets:
            if iso.sizes is not None:
                cells = window_sizes(family, budget, fixed_sizes(family, iso.sizes), iso.tokens_per_param)
            else:
                rungs = budget_sizes(family, budget, iso.sizes_per_budget, iso.tokens_per_param)
                cells = [(float(family.size(k)), k) for k in rungs]
            for cell in cells:
                tokens = budget / family.fpt(cell[1])
                runs += _cells(spec, family, cell, tokens, budget)
    if isinstance(spec.runs, IsoFlopRuns) and spec.runs.sizes is not None:
        unused = sorted({target for target, _ in fixed_sizes(family, spec.runs.sizes)} - {run.target for run in runs})
        if unused:
            raise SpecError(
                f"isoflop.sizes {', '.join(f'{size:.3g}' for size in unused)}: no budget runs them, as their tokens per "
                "parameter fall outside tokens_per_param at every budget; drop them or widen the window"
            )
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
    units: dict[str, float] = {}  # a trunk (with its branches) or an independent run -> the FLOPs it trains
    trunk_steps: dict[str, int] = {}  # a trunk trains to its latest branch point, once for all its branches
    for run in runs:
        key = run.trunk or run.name
        units[key] = units.get(key, 0.0) + run.trained_flops
        if run.trunk is not None:
            trunk_steps[key] = max(trunk_steps.get(key, 0), run.branch_step or 0)
    for key, steps in trunk_steps.items():
        units[key] += steps * next(run.flops_per_step for run in runs if run.trunk == key)
    loads = [0.0] * count
    owner: dict[str, int] = {}
    for key, flops in sorted(units.items(), key=lambda item: (-item[1], item[0])):
        target = min(range(count), key=lambda s: (loads[s], s))
        owner[key] = target
        loads[target] += flops
    return [run for run in runs if owner[run.trunk or run.name] == index]
