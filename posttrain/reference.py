"""The frozen reference model of DPO (and PPO): loaded from a run directory, checked against the policy.

Its per-token log-probabilities are computed on the host's rows as each batch is built (TRL's
"precomputed reference log-probs", done lazily): the reference never enters the train state, so
checkpoints and the train step stay the ordinary ones, and since batch(step) stays a pure function
of step a resumed run sees the same numbers. It runs on this process's first device; a reference
too large for one device is a limit of this design.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scalelab.errors import ConfigError, UserError
from scalelab.posttrain.losses import token_logprobs
from scalelab.posttrain.runs import check_reference_run
from scalelab.train.checkpoint_store import not_a_run


class ReferenceMismatchError(UserError):
    """The reference run's model is not the policy's; the message names the keys that differ."""


def model_differences(policy: Any, reference: Any) -> list[str]:
    """`key: policy value vs reference value` for each model config field that differs."""
    return [
        f"model.{field.name}: policy {getattr(policy, field.name)!r}, reference {getattr(reference, field.name)!r}"
        for field in dataclasses.fields(policy)
        if getattr(policy, field.name) != getattr(reference, field.name)
    ]


def check_reference(policy_cfg: Any, reference_cfg: Any, reference_dir: Path) -> None:
    """Raise ReferenceMismatchError unless the reference has the policy's model and tokenizer."""
    problems = model_differences(policy_cfg.model, reference_cfg.model)
    for key in ("name", "tokenizer", "sentinels"):
        a, b = getattr(policy_cfg.data, key), getattr(reference_cfg.data, key)
        if a != b:
            problems.append(f"data.{key}: policy {a!r}, reference {b!r}")
    if problems:
        raise ReferenceMismatchError(
            f"reference run {reference_dir} does not match the policy ({'; '.join(problems)}); set "
            "posttrain.reference to the run the policy started from (its --init-from, usually the SFT run)"
        )


def load_reference(cfg: Any) -> Any:
    """The reference run of `cfg` (posttrain.reference) as inference.generate's LoadedRun, checked."""
    from scalelab.inference.generate import load_run

    if cfg.posttrain.reference is None:
        raise ConfigError(
            f"posttrain.stage={cfg.posttrain.stage} needs a frozen reference: set posttrain.reference to a run "
            "directory (usually the SFT run the policy starts from)"
        )
    reference = Path(cfg.posttrain.reference)
    if not (reference / "config.yaml").is_file():
        raise ConfigError(
            f"posttrain.reference={reference} {not_a_run(reference)}; set it to a run directory scalelab wrote (usually the SFT run "
            "the policy starts from)"
        )
    check_reference_run(reference)
    run = load_run(reference)
    check_reference(cfg, run.cfg, reference)
    return run


class ReferenceSource:
    """A preference source whose batches also carry the reference's per-token log-probs (`ref_logprobs`)."""

    def __init__(self, source: Any, cfg: Any, reference: Any = None):
        self.source = source
        run = reference if reference is not None else load_reference(cfg)
        model = run.model
        self.params = run.params

        def logprobs(params, batch):
            return token_logprobs(model.apply(params, batch), batch["targets"])

        self._logprobs = jax.jit(logprobs)

    def _with_reference(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ref = np.asarray(jax.device_get(self._logprobs(self.params, batch)), np.float32)
        return {**batch, "ref_logprobs": ref * batch["weights"]}

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return self._with_reference(self.source.batch(step))

    def eval_batch(self, index: int) -> dict[str, np.ndarray]:
        return self._with_reference(self.source.eval_batch(index))
