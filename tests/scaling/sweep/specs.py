"""Small sweep specs for the sweep tests: tiny models on synthetic data, a few steps each."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# 2 budgets x 2 sizes of 1-layer models (d_model 16 and 32): 10 to 70 steps of 8 x 16 tokens each.
MICRO: dict[str, Any] = {
    "name": "micro",
    "base": "gpt-tiny",
    "config": {
        "train": {"seq_len": 16, "eval_batches": 1},
        "schedule": {"warmup_steps": 0},
        "logging": {"tensorboard": False, "log_every": 5},
    },
    "family": {"aspect_ratio": 32, "head_dim": 16, "ffn_multiplier": 4},
    "isoflop": {"budgets": [2e8, 4e8], "sizes": [3e3, 1.2e4]},
    "rules": {
        "lr": {"value": 3e-3, "ref_params": 1e4, "exponent": -0.25},
        "batch_size": 8,
        "evals_per_run": 2,
        "checkpoints_per_run": 2,
        "min_steps": 5,
    },
    "seeds": [0],
}


def micro(**changes: Any) -> dict[str, Any]:
    """A copy of MICRO with dotted keys set (`rules__min_steps=3` sets rules.min_steps); None deletes a key."""
    spec = copy.deepcopy(MICRO)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


def write_spec(directory: Path, spec: dict[str, Any], name: str = "micro.yaml") -> Path:
    """Write `spec` as YAML and return its path."""
    path = directory / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
