"""Loading a trained run for generation: its model, newest checkpoint and tokenizer; prompts as token ids.

`scalelab generate` (scalelab/cli/generate.py) continues prompts with a gpt run, or answers them with a
t5 run, using the KV-cache decoder.

A t5 model's prompt is its encoder's input, and its output is what the decoder writes from the
decoder start id its span-corruption objective trained with, not a continuation of the prompt.

The run's resolved config.yaml gives the model; its newest intact checkpoint gives the
parameters (restored by train/checkpoint_params.py's `load_params`, on one device); the tokenizer the
checkpoint recorded turns text into ids and back. A run on the synthetic source has no
tokenizer, so its prompts are token ids (`--prompt-ids`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scalelab.errors import UserError


@dataclasses.dataclass
class LoadedRun:
    """What generation needs from a run directory."""

    cfg: Any  # train.config.Config
    model: Any  # model.functional.ModelDef
    params: dict[str, Any]
    step_dir: Path
    tokenizer: Any | None  # train.data.tokenizer.Tokenizer, or None for the synthetic source


def load_run(run_dir: Path) -> LoadedRun:
    """The config, newest checkpoint's parameters (on one device) and tokenizer of a gpt or t5 run directory."""
    from scalelab.parallel.config import MeshConfig
    from scalelab.train.checkpoint_compat import read_meta
    from scalelab.train.checkpoint_params import load_params
    from scalelab.train.checkpoint_store import CHECKPOINT_DIR, not_a_run, run_root, saved_steps
    from scalelab.train.config_io import load_config
    from scalelab.train.trainer import Trainer

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        owner = run_root(run_dir)
        if owner is not None:
            raise UserError(
                f"{run_dir} is a checkpoint folder, not a run directory; give the run directory {owner} (its newest "
                "intact checkpoint is read)"
            )
        raise UserError(
            f"run directory {run_dir} {not_a_run(run_dir)}; give a directory that scalelab train wrote (--run-dir)"
        )
    cfg = load_config(run_dir / "config.yaml")
    if cfg.model.family not in ("gpt", "t5"):
        raise UserError(
            f"{run_dir} holds a {cfg.model.family} model (model.family={cfg.model.family}); scalelab generate "
            "decodes with gpt (decoder-only) and t5 (encoder-decoder) models only"
        )
    if not saved_steps(run_dir / CHECKPOINT_DIR):
        raise UserError(
            f"{run_dir} has no checkpoints; train it again with them on (add --set checkpoint.every=100 --overwrite), "
            "or, if it is still training with them on, wait for the first one"
        )
    # Decoding runs on one device, whatever mesh the run trained on.
    local = dataclasses.replace(cfg, mesh=MeshConfig(data=1, rules=cfg.mesh.rules))
    trainer = Trainer.build(local, devices=jax.devices()[:1])
    params, step_dir = load_params(
        run_dir,
        local,
        trainer,
        flag="RUN_DIR",
        command="generate",
        advice=f"{run_dir}/config.yaml no longer describes its checkpoints: restore the one scalelab train wrote",
    )
    return LoadedRun(cfg, trainer.model, params, step_dir, _tokenizer(cfg, read_meta(step_dir)))


def _tokenizer(cfg: Any, meta: dict[str, Any]) -> Any | None:
    """The tokenizer the checkpoint recorded, else the one the config reads; None for the synthetic source."""
    from scalelab.data.tokens import TOKENIZER_META, find_store, open_store

    if cfg.data.source != "tfds":
        return None
    recorded = meta.get("data", {}).get("tokenizer")
    if recorded and (Path(recorded) / TOKENIZER_META).is_file():
        return open_store(Path(recorded)).tokenizer
    return find_store(cfg.data, cfg.model.vocab_size).tokenizer


def parse_ids(texts: list[str], vocab_size: int) -> list[list[int]]:
    """Comma-separated id lists, each id checked against the vocabulary."""
    prompts = []
    for text in texts:
        try:
            spaced = text.replace(" ", "").removesuffix(",")
            ids = [int(part) for part in spaced.split(",")] if spaced else []
        except ValueError:  # not a number, or an empty place between commas
            raise UserError(f"--prompt-ids {text!r}: give integers separated by commas, e.g. 3,17,42") from None
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise UserError(f"--prompt-ids {text!r}: ids {bad} are outside the vocabulary 0..{vocab_size - 1}")
        prompts.append(ids)
    return prompts


def right_padded(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() == 0:
        raise UserError("a prompt is empty (it encodes to no tokens); give at least one token to continue from")
    padded = np.zeros((len(prompts), lengths.max()), np.int32)
    for row, ids in enumerate(prompts):
        padded[row, : len(ids)] = ids
    return padded, lengths
