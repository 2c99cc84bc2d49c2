"""Numbers as people read and write them, and config keys as dotted paths.

A leaf module: it imports nothing of scalelab's, so every package, however low, can use it.
"""

from __future__ import annotations

from typing import Any

# Largest first: a value takes the first prefix it reaches.
SI_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(value: float, unit: str = "") -> str:
    """`value` to 3 significant figures with an SI prefix and `unit`: 1.23M, 45.6kB, 4.5EFLOP."""
    for scale, prefix in SI_PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def parse_float(value: Any, default: float | None = None) -> float | None:
    """`value` as a float if it is a number or a string that reads as one, else `default`.

    Strings count because YAML 1.1 reads `3e-4` and `1e12` (no dot) as strings, and CSV cells and
    command-line flags are strings. A bool is not a number. NaN and infinity come back as they
    are: callers that need a finite number check for it and word the error for their key.
    """
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float | str):
        try:
            return float(value)
        except (ValueError, OverflowError):  # not a number; an int too large for a float
            return default
    return default


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted.key: value} of a nested mapping (a non-mapping is `{prefix: data}`), to compare configs key by key."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
