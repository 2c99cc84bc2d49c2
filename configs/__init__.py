"""The shipped configs (`scalelab train gpt-tiny`) and sweep specs (`scalelab sweep run demo`), as package data."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
