"""What kind of run a directory holds, and a decoder's parameters out of any kind of gpt run.

A run directory's config.yaml records its stage (`posttrain.stage`): pretrain, sft, dpo and ppo runs
hold a policy (a ppo run's also carries its value head), a reward run holds a reward model (the
decoder plus a scalar head whose score is what it was trained for). The post-training commands
read a run's kind before loading it, so a reward model given where a policy belongs (`--init-from`,
`posttrain.reference`, a run to sample from) is refused with one line naming both, instead of
failing deep in a restore or, worse, being used as if it were a policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from scalelab.errors import UserError
from scalelab.files import read_yaml
from scalelab.posttrain.heads import HEAD, base_params
from scalelab.train.checkpoint_store import not_a_run, run_root

WITH_HEAD = ("reward", "ppo")  # stages whose checkpoints carry the scalar head
KINDS = {
    "pretrain": "a pre-trained run",
    "sft": "an SFT run",
    "reward": "a reward-model run",
    "dpo": "a DPO run",
    "ppo": "a PPO run",
}


class WrongRunKindError(UserError):
    """A run of one kind was given where another kind belongs; the message names both."""


def run_stage(source: Path) -> str | None:
    """posttrain.stage of the run `source` belongs to (pretrain when its config has no posttrain section);
    None when no config.yaml says."""
    root = run_root(source)
    return None if root is None else saved_stage(root)


def saved_stage(run_dir: Path) -> str | None:
    """posttrain.stage in `run_dir`/config.yaml (pretrain when it has no posttrain section); None without one."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    config = read_yaml(path, "restore the config.yaml scalelab wrote into that run directory")
    post = config.get("posttrain") if isinstance(config, dict) else None
    stage = post.get("stage") if isinstance(post, dict) else None
    return stage if isinstance(stage, str) else "pretrain"


def check_run_dir(label: str, run_dir: Path) -> None:
    """WrongRunKindError unless `run_dir` (given as `label`) is a run directory: one with a config.yaml."""
    if not (Path(run_dir) / "config.yaml").is_file():
        raise WrongRunKindError(f"{label} {run_dir} {not_a_run(run_dir)}; give a run directory that scalelab wrote")


def check_policy_run(label: str, run_dir: Path) -> None:
    """A run directory holding a policy (any run but a reward model), to sample from or to measure KL against."""
    check_run_dir(label, run_dir)
    refuse_reward_model(f"{label} {run_dir}", run_dir, "give a pre-trained, SFT, DPO or PPO run")


def check_reward_run(label: str, run_dir: Path) -> None:
    """A run directory holding a reward model (a `scalelab reward` run)."""
    check_run_dir(label, run_dir)
    stage = saved_stage(run_dir)
    if stage != "reward":
        raise WrongRunKindError(
            f"{label} {run_dir} is not a reward model (its config.yaml has posttrain.stage={stage}); give the run "
            "directory of a `scalelab reward` run"
        )


def refuse_reward_model(label: str, source: Path, fix: str) -> None:
    """WrongRunKindError when `source` is a reward-model run, given (as `label`) where a policy belongs."""
    if run_stage(source) == "reward":
        raise WrongRunKindError(
            f"{label} is a reward-model run (its config.yaml has posttrain.stage=reward): it scores text and is "
            f"not a policy; {fix}"
        )


# What to give instead of a reward model, per stage whose --init-from names one.
POLICY_FIX = {
    "sft": "start SFT from a pre-trained run",
    "dpo": "start DPO from the SFT run",
    "ppo": "start PPO from the SFT run; the reward model goes in posttrain.ppo.reward_model",
}
REFERENCE_FIX = "set posttrain.reference to the run the policy started from (usually the SFT run)"


def check_init_from(stage: str, init_from: Path | None) -> None:
    """Refuse a reward-model run as the start of a policy stage (sft, dpo, ppo); a reward run may start from any."""
    if init_from is not None and stage in POLICY_FIX:
        refuse_reward_model(f"--init-from {init_from}", init_from, POLICY_FIX[stage])


def check_reference_run(reference: Path | str | None) -> None:
    """Refuse a reward-model run as the frozen reference of DPO or PPO."""
    if reference is not None:
        refuse_reward_model(f"posttrain.reference={reference}", Path(reference), REFERENCE_FIX)


def refuse_another_stage(run_dir: Path, stage: str, overwrite: bool) -> None:
    """WrongRunKindError when `run_dir` holds a run of another stage: re-running a stage command resumes its
    run, so continuing another stage's run would rewrite that run's config.yaml and mix two runs' metrics."""
    saved = saved_stage(run_dir)
    if saved is not None and saved != stage and not overwrite:
        raise WrongRunKindError(
            f"--run-dir {run_dir} holds {KINDS.get(saved, 'a run of stage ' + saved)} (posttrain.stage={saved}), "
            f"not a {stage} run; give this run its own --run-dir (--init-from {run_dir} starts from that run), "
            f"or add --overwrite to replace it; `scalelab train {run_dir / 'config.yaml'} --run-dir {run_dir}` "
            "resumes it"
        )


class DecoderView:
    """A trainer seen as what a checkpoint of `stage` holds: the decoder, plus the scalar head where the
    stage trains one, so `load_params` can restore it whatever the trainer's own model carries."""

    def __init__(self, trainer: Any, stage: str | None):
        self.trainer = trainer
        self.with_head = stage in WITH_HEAD

    def abstract_state(self) -> dict[str, Any]:
        own = self.trainer.abstract_state()["params"]
        params = base_params(own)
        if self.with_head:
            params[HEAD] = own.get(HEAD) or _replicated_head(self.trainer)
        return {"params": params}


def _replicated_head(trainer: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """The scalar head's shapes, replicated: restored to be dropped, for a trainer whose model has none."""
    sharding = NamedSharding(trainer.mesh, PartitionSpec())
    d = trainer.cfg.model.d_model
    return {
        "kernel": jax.ShapeDtypeStruct((d, 1), jax.numpy.float32, sharding=sharding),
        "bias": jax.ShapeDtypeStruct((1,), jax.numpy.float32, sharding=sharding),
    }


def load_decoder(init_from: Path, cfg: Any, trainer: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(decoder parameters, the checkpoint's scalar head or None) of the run `init_from`, on `trainer`'s mesh."""
    from scalelab.train.checkpoint_params import load_params

    params, _ = load_params(init_from, cfg, DecoderView(trainer, run_stage(init_from)))
    return base_params(params), params.get(HEAD)
