"""WSD cooldown branches: the runs of one size share one constant-learning-rate trunk.

Hägele et al. (2024) train a model once at constant learning rate and, for each token count,
branch a short linear decay off the trunk. A run of S steps under the wsd schedule holds the peak
for its first `wsd_decay_start(S, f)` steps T, so its state there is the trunk's state after T
steps: same warmup, same learning rate, the same data batches (the loader is indexed by step) and
the same seed. Its branch copies the trunk's checkpoint at T into its own run directory and
resumes from it with the run's own wsd config, so the branch is the independent run, computed
for S - T steps instead of S. The trunk of a size trains once, to its longest branch's T.

Branch runs stay ordinary runs: their results rows, loss curves (the trunk's lines before T, then
their own) and fits are those of independently trained wsd runs.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path

from scalelab.model.config import ConfigError
from scalelab.scaling.sweep.spec_types import SpecError, SweepSpec
from scalelab.train.checkpoint_store import CHECKPOINT_DIR, saved_steps
from scalelab.train.config import Config
from scalelab.train.config_io import config_from_dict, merge_config, to_dict
from scalelab.train.metrics import METRICS_FILE

TRUNK_DIR = "trunks"  # <sweep_dir>/trunks/<trunk>/: a training run directory of its own


@dataclasses.dataclass(frozen=True)
class Trunk:
    """The constant-learning-rate run that every branch of one size and seed resumes from."""

    name: str
    steps: int  # trained to the latest branch point
    branch_steps: tuple[int, ...]  # where its branches start, each a kept checkpoint
    runs: tuple[str, ...]  # the branch runs, in plan order
    flops_per_step: float
    config: Config

    @property
    def flops(self) -> float:
        """FLOPs the trunk trains."""
        return self.steps * self.flops_per_step


def branch_step(config: Config) -> int:
    """Where a branch run leaves its trunk: the last step of its wsd schedule at the peak."""
    (step,) = config.checkpoint.at_steps  # the plan asks each branch run to keep exactly that checkpoint
    return step


def _trunk_config(name: str, longest: Config, points: list[int], checkpoints_per_run: int) -> Config:
    """The longest branch's config, cut at its branch point, at constant lr, with a kept checkpoint at every point."""
    steps = max(points)
    update = {
        "name": name,
        "train": {"steps": steps, "eval_every": 0},  # a trunk's loss at constant lr is no result
        # Constant lr as wsd that never decays: the branches' own schedule, so the trunk and its branches
        # run one compiled train step (the schedule's numbers are its arguments, train/steps.py).
        "schedule": {"name": "wsd", "decay_fraction": 0.0},
        "checkpoint": {
            "every": -(-steps // checkpoints_per_run) if checkpoints_per_run else 0,
            "at_steps": points,
        },
    }
    try:
        return config_from_dict(merge_config(to_dict(longest), update))
    except ConfigError as error:
        raise SpecError(f"trunk {name}: {error}; fix the base config or the rules") from None


def _shared_settings(config: Config) -> dict:
    """What every branch of a trunk must agree on: all but the run's length and the settings that follow from it."""
    settings = to_dict(config)
    settings.pop("name")
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in ("steps", "eval_every")}
    settings.pop("checkpoint")
    return settings


def plan_trunks(spec: SweepSpec, runs: Sequence, flops_per_step: dict[str, float]) -> list[Trunk]:
    """One trunk per (shape, learning rate, seed) with two or more of `runs` (planned wsd runs), named after them."""
    groups: dict[str, list] = {}
    for run in runs:
        # a branch run is named <budget>-<shape>[-<lr>]-<seed>: the trunk is named after all but the budget
        groups.setdefault("trunk-" + run.name.split("-", 2)[2], []).append(run)
    trunks = []
    for name, members in groups.items():
        if len(members) == 1:
            continue  # a trunk of one branch saves nothing: that wsd run trains on its own
        shared = _shared_settings(members[0].config)
        for run in members[1:]:
            if _shared_settings(run.config) != shared:  # a per-size rule that depends on the run's length
                raise SpecError(
                    f"runs {members[0].name} and {run.name} share trunk {name} but differ in more than their "
                    "length; with branches, every rule must depend on the model size only"
                )
        points = sorted({branch_step(run.config) for run in members})
        longest = max(members, key=lambda run: run.steps)
        config = _trunk_config(name, longest.config, points, spec.rules.checkpoints_per_run)
        runs_of = tuple(run.name for run in members)
        trunks.append(Trunk(name, max(points), tuple(points), runs_of, flops_per_step[longest.name], config))
    return trunks


def on_its_own(config: Config, every: int) -> Config:
    """A planned wsd run with no trunk to share: it keeps only the checkpoints resume needs."""
    return dataclasses.replace(config, checkpoint=dataclasses.replace(config.checkpoint, every=every, at_steps=[]))


def trunk_dir(sweep_dir: Path, trunk: Trunk) -> Path:
    """Where a trunk trains."""
    return Path(sweep_dir) / TRUNK_DIR / trunk.name


def trunk_finished(trunk: Trunk, directory: Path) -> bool:
    """Whether the trunk holds every branch point (it then has nothing left to train)."""
    return set(trunk.branch_steps) <= set(saved_steps(directory / CHECKPOINT_DIR))


def start_branch(trunk_path: Path, step: int, run_dir: Path) -> bool:
    """Seed a branch's run directory with the trunk's checkpoint at `step` and its loss curve; False if seeded.

    The branch then resumes from that checkpoint like any interrupted run, so a branch that is itself
    interrupted resumes from its own newest checkpoint, and this copy is made once.
    """
    checkpoints = run_dir / CHECKPOINT_DIR
    if saved_steps(checkpoints):
        return False
    source = trunk_path / CHECKPOINT_DIR / str(step)
    if not source.is_dir():
        raise SpecError(
            f"trunk checkpoint {source} is missing, so branch {run_dir.name} cannot start; delete "
            f"{trunk_path} to retrain the trunk"
        )
    checkpoints.mkdir(parents=True, exist_ok=True)
    staging = checkpoints / f".{step}.copying"  # orbax never lists a dot-name; the rename commits the copy
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    metrics = trunk_path / METRICS_FILE
    if metrics.is_file():  # the branch's curve begins with the trunk's; its resume drops lines from `step` on
        shutil.copyfile(metrics, run_dir / METRICS_FILE)
    staging.rename(checkpoints / str(step))
    return True
