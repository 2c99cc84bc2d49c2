"""The quantization benchmark's options, apart from it so that the CLI can list them without importing JAX."""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "quant.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (also `scalelab bench quant`'s)."""
    parser.add_argument("--run-dir", type=Path, default=None, help="a gpt run to start from (default: train one)")
    parser.add_argument("--quick", action="store_true", help="a tiny model, few steps and short timings")
    parser.add_argument("--steps", type=int, default=300, help="base training steps when no --run-dir")
    parser.add_argument("--tune-steps", type=int, default=100, help="steps of each fine-tune (plain and QAT)")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="rows decoded together (XLA on a CPU multiplies int8 natively from 4 rows up)",
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per timed generation")
    parser.add_argument("--calibration-batches", type=int, default=4, help="training batches w8a8-calibrated sees")
    parser.add_argument(
        "--widths", default="256,512,1024", help="d_model values of the w8a8-vs-bf16 width sweep (random weights)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
