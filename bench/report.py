"""Printing the benchmark's tables and writing them to bench/results/*.json."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scalelab.files import write_atomic
from scalelab.runtime.host import usable_cores

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# A column: (row key, header, formatter of a present value).
Column = tuple[str, str, Callable[[Any], str]]


def fixed(digits: int) -> Callable[[Any], str]:
    """Format with `digits` decimals."""
    return lambda v: f"{v:.{digits}f}"


def percent(v: float) -> str:
    """A fraction as a percentage."""
    return f"{100 * v:.1f}%"


def integer(v: float) -> str:
    """A count with thousands separators."""
    return f"{v:,.0f}"


def text(v: Any) -> str:
    """The value as it prints."""
    return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A plain-text table; missing or None values print as '-'."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([fmt(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """The same table in Markdown (for docs/benchmarks.md)."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        values = [fmt(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def host() -> dict[str, Any]:
    """Where the numbers came from: machine, CPU count and library versions."""
    import jax

    device = jax.devices()[0]
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpus": usable_cores(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` with the time it was written to `path`, atomically, and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **payload}
    write_atomic(path, json.dumps(payload, indent=1, default=str) + "\n")
    return path


def write(name: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write one section's results as <results_dir>/<name>.json and return the path."""
    return write_json(results_dir / f"{name}.json", payload)
