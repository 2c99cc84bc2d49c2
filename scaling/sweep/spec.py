"""Sweep specs: a base config, a model-family rule, the runs (grid or isoFLOP), per-size rules and seeds.

A spec is YAML under configs/sweeps/. Loading checks every field and the rules' consistency, so a
bad spec fails here, before any model is counted or trained. Errors name the key and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from scalelab.configs import CONFIG_DIR
from scalelab.files import read_yaml
from scalelab.model.config import ConfigError
from scalelab.scaling.sweep.spec_types import (
    Branches,
    FamilyRule,
    GridRuns,
    IsoFlopRuns,
    PowerRule,
    RunRules,
    SpecError,
    SweepSpec,
    check_finite,
)
from scalelab.train.config_io import from_dict, load_raw, merge_config, resolve_config_path
from scalelab.units import parse_float

SWEEP_DIR = CONFIG_DIR / "sweeps"


def _error(path: Path | None, message: str) -> SpecError:
    return SpecError(f"{path}: {message}" if path else message)


def _number(value: Any, key: str) -> float:
    """A finite number, accepting YAML 1.1's string reading of `1e12`."""
    number = parse_float(value)
    if number is None and isinstance(value, str):
        raise SpecError(f"{key}: expected a number, got {value!r}")
    if number is None or not math.isfinite(number):
        raise SpecError(f"{key}: expected a finite number, got {value if number is None else number!r}")
    return number


def log_values(value: Any, key: str) -> tuple[float, ...]:
    """A list of positive numbers, or `{min, max, count}` spaced evenly in log."""
    if isinstance(value, dict):
        unknown = set(value) - {"min", "max", "count"}
        if unknown or len(value) != 3:
            raise SpecError(f"{key}: a range needs exactly min, max and count, got {sorted(value)}")
        low, high = _number(value["min"], f"{key}.min"), _number(value["max"], f"{key}.max")
        count = value["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SpecError(f"{key}.count must be a positive integer, got {count!r}")
        if not 0 < low <= high or (count > 1 and low == high):
            raise SpecError(f"{key}: need 0 < min < max, got min={low}, max={high}")
        step = (math.log(high) - math.log(low)) / max(count - 1, 1)
        values = tuple(math.exp(math.log(low) + i * step) for i in range(count))
    elif isinstance(value, list):
        values = tuple(_number(v, f"{key}[{i}]") for i, v in enumerate(value))
    else:
        raise SpecError(f"{key}: expected a list of numbers or {{min, max, count}}, got {value!r}")
    if not values:
        raise SpecError(f"{key} is empty; list at least one value")
    if any(v <= 0 for v in values):
        raise SpecError(f"{key}: every value must be positive, got {list(values)}")
    if len(set(values)) != len(values):
        duplicates = sorted({v for v in values if values.count(v) > 1})
        raise SpecError(f"{key} lists {duplicates} more than once, which would plan duplicate runs; remove them")
    return values


def _mapping(value: Any, key: str, allowed: str) -> dict[str, Any]:
    """`value` as a mapping (an empty section is an empty one); anything else is a SpecError naming `allowed`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{key}: expected a mapping of {allowed}, got {type(value).__name__} {value!r}")
    return value


def _fields(cls: type) -> str:
    """A dataclass's field names, for the `allowed` of a mapping error."""
    return ", ".join(field.name for field in dataclasses.fields(cls))


def _power_rule(value: Any, key: str) -> dict[str, Any]:
    """The mapping of a per-size rule: a bare number is a constant rule; a mapping needs its value."""
    if not isinstance(value, dict):
        return {"value": value}
    if "value" not in value:
        raise SpecError(
            f"rules.{key}.value is missing (got {value!r}); give the value at ref_params, "
            f"e.g. {{value: ..., ref_params: 1e6, exponent: 0}} (keys: {_fields(PowerRule)})"
        )
    return value


def _fitted_lr(rule: dict[str, Any], relative_to: Path | None) -> dict[str, Any]:
    """rules.lr: {from_fit: PATH, ...}: the rule `scalelab fit --approach lr` saved, with any other keys over it."""
    from scalelab.scaling.fit.lr_rule import read_lr_rule
    from scalelab.scaling.fit.table import FitInputError

    rule = dict(rule)
    path = Path(str(rule.pop("from_fit")))
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if not path.is_file():
        raise SpecError(
            f"rules.lr.from_fit: {path} does not exist; write it with `scalelab fit LR_SWEEP --approach lr --out DIR` "
            "and point from_fit at DIR/lr_rule.json (relative to the spec's folder)"
        )
    try:
        fitted = read_lr_rule(path)
    except FitInputError as error:
        raise SpecError(f"rules.lr.from_fit: {error}") from None
    return {**fitted, **rule}


def _rules(data: dict[str, Any], branches: bool, relative_to: Path | None = None) -> RunRules:
    data = dict(data)
    if isinstance(data.get("lr"), dict) and "from_fit" in data["lr"]:
        data["lr"] = _fitted_lr(data["lr"], relative_to)
    for key in ("lr", "batch_size"):
        if key not in data:
            raise SpecError(f"rules.{key} is missing; give a number or {{value, ref_params, exponent, min, max}}")
        data[key] = _power_rule(data[key], key)
    data["batch_size"] = {"multiple": 1, **data["batch_size"]}  # batch sizes are whole sequences
    if "b2" in data:
        data["b2"] = _power_rule(data["b2"], "b2")
    multipliers = log_values(data.pop("lr_multipliers", [1.0]), "rules.lr_multipliers")
    if "warmup_fraction" in data and "warmup_tokens_per_param" in data:
        raise SpecError(
            "rules: give warmup_fraction (a share of each run) or warmup_tokens_per_param (sized to the model), not both"
        )
    if branches and "warmup_tokens_per_param" not in data:
        raise SpecError(
            "branches: the runs of one size share their trunk's warmup, so it cannot be a share of each run's "
            "length; set rules.warmup_tokens_per_param (Porian et al. 2024 use 1: as many tokens as parameters)"
        )
    rules = dataclasses.replace(from_dict(RunRules, data, "rules"), lr_multipliers=multipliers)
    check_finite(rules, "rules")
    rules.lr.check("lr")
    rules.batch_size.check("batch_size")
    if rules.b2 is not None:
        rules.b2.check("b2")
        for bound in (rules.b2.value, rules.b2.min, rules.b2.max):
            if bound is not None and not 0.0 < bound < 1.0:
                raise SpecError(f"rules.b2: AdamW's beta2 lies in (0, 1), got {bound:g}; bound it with min and max")
        if rules.b2.exponent and rules.b2.max is None:
            raise SpecError("rules.b2 grows or shrinks with size: give it a max below 1 so no size gets beta2 >= 1")
    if rules.warmup_tokens_per_param is not None and rules.warmup_tokens_per_param < 0:
        raise SpecError(f"rules.warmup_tokens_per_param must be >= 0, got {rules.warmup_tokens_per_param}")
    if rules.batch_size.value % 1:  # rounding would silently change it (0.3 would become 1)
        raise SpecError(
            f"rules.batch_size.value must be a whole number of sequences, got {rules.batch_size.value:g}; round it"
        )
    if not 0.0 <= rules.warmup_fraction < 1.0:
        raise SpecError(f"rules.warmup_fraction must be in [0, 1), got {rules.warmup_fraction}")
    if rules.evals_per_run < 1:
        raise SpecError(f"rules.evals_per_run must be >= 1 (results need an eval loss), got {rules.evals_per_run}")
    if rules.checkpoints_per_run < 0:
        raise SpecError(f"rules.checkpoints_per_run must be >= 0, got {rules.checkpoints_per_run}")
    if rules.min_steps < 1:
        raise SpecError(f"rules.min_steps must be >= 1, got {rules.min_steps}")
    return rules


def _isoflop(data: Any) -> IsoFlopRuns:
    data = _mapping(data, "isoflop", "budgets, sizes or sizes_per_budget + tokens_per_param")
    unknown = set(data) - {"budgets", "sizes", "sizes_per_budget", "tokens_per_param"}
    if unknown:
        raise SpecError(
            f"isoflop: unknown keys {sorted(unknown)}; use budgets, sizes or sizes_per_budget + tokens_per_param"
        )
    if "budgets" not in data:
        raise SpecError("isoflop.budgets is missing; list the compute budgets in FLOPs")
    budgets = log_values(data["budgets"], "isoflop.budgets")
    if "sizes" in data:
        if "sizes_per_budget" in data:
            raise SpecError(
                "isoflop: give either sizes (one ladder, optionally cut per budget by tokens_per_param) or "
                "sizes_per_budget with tokens_per_param (sizes spaced anew at each budget), not both"
            )
        sizes = log_values(data["sizes"], "isoflop.sizes")
        window = _tokens_per_param(data["tokens_per_param"]) if "tokens_per_param" in data else None
        return IsoFlopRuns(budgets, sizes, None, window)
    if "sizes_per_budget" not in data or "tokens_per_param" not in data:
        raise SpecError(
            "isoflop: the size list is empty; give sizes: [...], or sizes_per_budget with tokens_per_param: [min, max]"
        )
    count = data["sizes_per_budget"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise SpecError(f"isoflop.sizes_per_budget must be a positive integer, got {count!r}")
    return IsoFlopRuns(budgets, None, count, _tokens_per_param(data["tokens_per_param"]))


def _tokens_per_param(ratio: Any) -> tuple[float, float]:
    if not isinstance(ratio, list) or len(ratio) != 2:
        raise SpecError(f"isoflop.tokens_per_param must be [min, max], got {ratio!r}")
    low, high = (_number(v, "isoflop.tokens_per_param") for v in ratio)
    if not 0 < low < high:
        raise SpecError(f"isoflop.tokens_per_param: need 0 < min < max, got [{low}, {high}]")
    return low, high


def _grid(data: Any) -> GridRuns:
    data = _mapping(data, "grid", "sizes and tokens")
    unknown = set(data) - {"sizes", "tokens"}
    if unknown:
        raise SpecError(f"grid: unknown keys {sorted(unknown)}; use sizes and tokens")
    for key in ("sizes", "tokens"):
        if key not in data:
            raise SpecError(f"grid.{key} is missing (the size list is empty); list at least one value")
    return GridRuns(log_values(data["sizes"], "grid.sizes"), log_values(data["tokens"], "grid.tokens"))


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SpecError(f"seeds: expected a non-empty list of integers, got {value!r}")
    if any(not isinstance(s, int) or isinstance(s, bool) for s in value):
        raise SpecError(f"seeds: every seed must be an integer, got {value!r}")
    if len(set(value)) != len(value):
        raise SpecError(f"seeds lists a seed more than once ({value}), which would plan duplicate runs; remove it")
    return tuple(value)


def spec_from_dict(data: dict[str, Any], path: Path | None = None) -> SweepSpec:
    """Check a spec mapping and build the SweepSpec; `path` locates a relative base config."""
    try:
        known = {"name", "base", "config", "family", "isoflop", "grid", "rules", "seeds", "branches"}
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"unknown top-level keys {sorted(unknown)}; a spec has {', '.join(sorted(known))}")
        if ("isoflop" in data) == ("grid" in data):
            raise SpecError("give exactly one of isoflop: (budgets in FLOPs) or grid: (sizes × tokens)")
        if "base" not in data:
            raise SpecError("base is missing; name the training config the runs start from (e.g. gpt-tiny)")
        if not isinstance(data["base"], str):
            raise SpecError(
                f"base: expected the name or path of a training config (e.g. gpt-tiny), "
                f"got {type(data['base']).__name__} {data['base']!r}"
            )
        overrides = _mapping(data.get("config"), "config", "training-config keys")
        base_path = resolve_config_path(data["base"], path.parent if path else None)
        base = merge_config(load_raw(base_path), overrides)
        family_data = _mapping(data.get("family"), "family", _fields(FamilyRule))
        if "n_heads" in family_data and "head_dim" in family_data:
            raise SpecError(
                "family: give head_dim (n_heads grows with width) or n_heads (head_dim grows with width), not both"
            )
        family = from_dict(FamilyRule, family_data, "family")
        runs = _isoflop(data["isoflop"]) if "isoflop" in data else _grid(data["grid"])
        branches = None
        if "branches" in data:
            branches = from_dict(Branches, _mapping(data["branches"], "branches", _fields(Branches)), "branches")
        rules = _rules(
            _mapping(data.get("rules"), "rules", _fields(RunRules)), branches is not None, path.parent if path else None
        )
        seeds = _seeds(data.get("seeds", [0]))
    except (ConfigError, FileNotFoundError) as error:
        raise _error(path, str(error)) from None
    name = str(data.get("name") or (path.stem if path else "sweep"))
    return SweepSpec(name, path, base, family, runs, rules, seeds, branches)


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A spec file from a path, or a name under configs/sweeps/ (`demo` -> configs/sweeps/demo.yaml)."""
    for candidate in (Path(name_or_path), SWEEP_DIR / f"{name_or_path}.yaml", SWEEP_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
    raise FileNotFoundError(
        f"sweep spec {name_or_path!r} not found; give a YAML path or one of: {', '.join(available)}"
    )


def load_spec(name_or_path: str | Path) -> SweepSpec:
    """Read, check and build a sweep spec."""
    path = resolve_spec_path(name_or_path)
    data = read_yaml(path, "fix the spec") or {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return spec_from_dict(data, path)
