"""The root config in and out of YAML: `base:` inheritance, `--set` overrides, typed conversion by key path.

Every error names the full key path (for example `optimizer.lr`) and, for an unknown key,
the nearest valid one. The sections and their checks are in config.py.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from scalelab.configs import CONFIG_DIR
from scalelab.errors import ConfigError
from scalelab.files import parse_yaml, read_yaml
from scalelab.train.config import Config
from scalelab.units import parse_float


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (dicts become dataclasses)."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of keys, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        number = parse_float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{path}: expected a finite number, got {value!r}")
            return number
    if tp is int and isinstance(value, float | str):
        # A whole number written in scientific notation: YAML reads `1e5` as a string and `1.0e5` as a float.
        number = parse_float(value)
        if number is not None and math.isfinite(number) and number.is_integer():
            return int(number)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types by key path."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.0)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
    kwargs = {key: _convert(value, hints[key], f"{prefix}{key}") for key, value in data.items()}
    return cls(**kwargs)


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, section by section (update wins)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A config file from a path, or a name under configs/ (`gpt-tiny` -> configs/gpt-tiny.yaml)."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.append(relative_to / name_or_path)
    for directory in ([relative_to] if relative_to else []) + [CONFIG_DIR]:
        candidates += [directory / f"{name_or_path}.yaml", directory / str(name_or_path)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {name_or_path!r} not found; give a YAML path or one of: {', '.join(available)}")


def load_raw(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a config with its `base:` chain merged in (child keys win)."""
    path = resolve_config_path(name_or_path, _seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    data = read_yaml(path, "fix the file or pass another config") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    base = data.pop("base", None)
    if base is None:
        return data
    parent = load_raw(base, (*_seen, path))
    parent.pop("name", None)
    return merge_config(parent, data)


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Apply one `a.b.c=value` override; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value, e.g. model.n_layers=4")
    key, raw = override.split("=", 1)
    value = parse_yaml(raw, f"override {override!r}") if raw.strip() else None
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value
    return data


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load, merge, override and validate a config."""
    return config_from_dict(load_raw(name_or_path), overrides)


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Validate a config given as a mapping (for sweeps and tests), with overrides."""
    data = copy.deepcopy(data)  # overrides edit nested sections in place; leave the caller's mapping alone
    for override in overrides:
        data = apply_override(data, override)
    return from_dict(Config, data)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
