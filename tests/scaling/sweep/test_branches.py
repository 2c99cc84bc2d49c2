"""WSD cooldown branches: planning trunks, the compute they save, and branches equal to independent wsd runs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from scalelab.scaling.sweep.branches import TRUNK_DIR, trunk_dir
from scalelab.scaling.sweep.plan import make_plan, shard_runs
from scalelab.scaling.sweep.plan_table import format_plan
from scalelab.scaling.sweep.results import RESULTS_CSV, WALL_FILE, read_csv, write_result
from scalelab.scaling.sweep.runner import result_row, run_sweep
from scalelab.scaling.sweep.spec import load_spec, spec_from_dict
from scalelab.scaling.sweep.spec_types import SpecError
from scalelab.scaling.sweep.utilization import sweep_utilization
from scalelab.train.checkpoint_store import saved_steps
from scalelab.train.loop import train
from scalelab.train.lr_schedules import wsd_decay_start
from scalelab.train.metrics import read_metrics
from tests.scaling.sweep.specs import micro


def write_metrics(run_dir, records) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


# One size at three budgets: one trunk and three branches (and a second size for the sharding check).
BRANCHED = {
    "isoflop__budgets": [1e8, 2e8, 4e8],
    "isoflop__sizes": [3e3],
    "branches": {"cooldown_fraction": 0.25},
    "rules__warmup_tokens_per_param": 0.5,
    "rules__checkpoints_per_run": 0,
}


def test_branches_share_one_trunk_per_size_and_report_the_compute_saved():
    two_sizes = {
        "isoflop__sizes": [3e3, 1.2e4],
        "isoflop__budgets": [4e8, 8e8, 1.6e9],
        "rules__warmup_tokens_per_param": 0.1,
    }
    plan = make_plan(spec_from_dict(micro(**{**BRANCHED, **two_sizes})))
    assert len(plan.trunks) == 2
    for trunk in plan.trunks:
        branches = [run for run in plan.runs if run.trunk == trunk.name]
        assert len(branches) == 3
        assert trunk.branch_steps == tuple(sorted(wsd_decay_start(run.steps, 0.25) for run in branches))
        assert trunk.steps == max(trunk.branch_steps)
        assert (trunk.config.schedule.name, trunk.config.schedule.decay_fraction) == ("wsd", 0.0)  # constant lr
        assert trunk.config.checkpoint.at_steps == list(trunk.branch_steps)
        for run in branches:
            # the same warmup as the trunk, sized to the model: 0.1 tokens per parameter
            assert run.config.schedule.warmup_steps == trunk.config.schedule.warmup_steps
            assert run.config.schedule.warmup_steps == round(0.1 * run.size / (run.batch_size * 16)) > 0
            assert run.config.schedule.name == "wsd" and run.config.checkpoint.at_steps == [run.branch_step]
            assert run.trained_flops == (run.steps - run.branch_step) * run.flops_per_step
    independent = plan.total_flops
    trained = sum(t.flops for t in plan.trunks) + sum(r.trained_flops for r in plan.runs)
    # budgets doubling: the trunk is 3/4 of the longest run, and each run pays a quarter: about 0.68 of independent
    assert plan.trained_flops == pytest.approx(trained) and trained < 0.7 * independent
    assert f"against {independent:.3g} for independent runs: {1 - trained / independent:.0%} saved" in format_plan(plan)
    # the progress bar's costs: the first branch of each trunk (in plan order) trains the trunk as well
    costs = plan.costs(plan.runs)
    assert sum(costs.values()) == pytest.approx(plan.trained_flops)
    for trunk in plan.trunks:
        first, *rest = [run for run in plan.runs if run.trunk == trunk.name]
        assert costs[first.name] == pytest.approx(trunk.flops + first.trained_flops)
        assert all(costs[run.name] == run.trained_flops for run in rest)
    # the branches of one trunk land in one shard, so it is trained once; shards balance what they train
    largest_unit = max(t.flops + sum(r.trained_flops for r in plan.runs if r.trunk == t.name) for t in plan.trunks)
    for count in (2, 3):
        loads = []
        for index in range(count):
            shard = shard_runs(plan.runs, index, count)
            for trunk in plan.trunks:
                mine = [run for run in shard if run.trunk == trunk.name]
                assert len(mine) in (0, 3)
            loads.append(sum(plan.costs(shard).values()))
        assert sum(loads) == pytest.approx(plan.trained_flops)
        assert max(loads) - min(loads) <= largest_unit


def test_shards_balance_the_flops_a_trunk_trains_once_not_once_per_branch():
    # The demo mixes trunks and independent runs. Counting a trunk's prefix once per branch overweighted
    # trunks: its two shards trained 1.45e13 and 1.37e13 FLOPs (6% apart), and took 355 s and 282 s.
    plan = make_plan(load_spec("demo"))
    loads = [sum(plan.costs(shard_runs(plan.runs, index, 2)).values()) for index in range(2)]
    assert sum(loads) == pytest.approx(plan.trained_flops)
    assert max(loads) / min(loads) < 1.01


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"branches": {"cooldown_fraction": 1.0}}, r"branches\.cooldown_fraction must be in \(0, 1\), got 1\.0"),
        ({"branches": {"cooldown_fraction": 0}}, r"branches\.cooldown_fraction must be in \(0, 1\), got 0"),
        (
            {"branches": {"cooldown": 0.2}},
            r"unknown key 'branches\.cooldown'; did you mean 'branches\.cooldown_fraction'",
        ),
        ({"branches": [0.2]}, r"branches: expected a mapping of cooldown_fraction"),
        ({"rules__warmup_tokens_per_param": None}, r"set rules\.warmup_tokens_per_param"),
        ({"rules__warmup_fraction": 0.1}, r"give warmup_fraction .* or warmup_tokens_per_param .*, not both"),
        ({"rules__warmup_tokens_per_param": -1}, r"rules\.warmup_tokens_per_param must be >= 0, got -1"),
        ({"rules__b2": 1.5}, r"rules\.b2: AdamW's beta2 lies in \(0, 1\), got 1\.5"),
        ({"rules__b2": {"value": 0.95, "exponent": 0.1}}, r"rules\.b2 grows or shrinks with size: give it a max"),
        ({"rules__b2": {"value": 0.95, "exponent": 0.1, "max": 1.0}}, r"rules\.b2: AdamW's beta2 lies in \(0, 1\)"),
    ],
)
def test_bad_branch_and_rule_values_name_the_key_and_the_fix(changes, message):
    with pytest.raises(SpecError, match=message):
        make_plan(spec_from_dict(micro(**{**BRANCHED, **changes})))


def test_per_size_beta2_reaches_each_run():
    plan = make_plan(
        spec_from_dict(micro(rules__b2={"value": 0.99, "ref_params": 1e4, "exponent": 0.05, "max": 0.999}))
    )
    for run in plan.runs:
        assert run.config.optimizer.b2 == pytest.approx(min(0.999, 0.99 * (run.size / 1e4) ** 0.05))


def test_branch_runs_equal_independent_wsd_runs(tmp_path, capsys):
    plan = make_plan(spec_from_dict(micro(**{**BRANCHED, "isoflop__budgets": [1e8, 2e8]})))
    start = time.perf_counter()
    report = run_sweep(plan, tmp_path / "sweep", quiet=True)
    elapsed = time.perf_counter() - start
    assert "warning" not in capsys.readouterr().err  # a branch's settings differ from its trunk's by design
    # The trunk keeps its own wall time and the first branch does not count it again.
    usage = sweep_utilization(plan, tmp_path / "sweep", peak=1e9)
    assert usage is not None and (usage.runs, usage.trunks) == (2, 1) and usage.wall_s <= elapsed
    assert sorted(report.ran) == sorted(run.name for run in plan.runs) and not report.failed
    (trunk,) = plan.trunks
    assert saved_steps(tmp_path / "sweep" / TRUNK_DIR / trunk.name / "checkpoints") == list(trunk.branch_steps)
    rows = {row["run"]: row for row in read_csv(tmp_path / "sweep" / RESULTS_CSV)}
    for run in plan.runs:
        alone = train(run.config, tmp_path / "alone" / run.name, quiet=True)
        branch_curve = [r["loss"] for r in read_metrics(tmp_path / "sweep" / "runs" / run.name) if "loss" in r]
        alone_curve = [r["loss"] for r in read_metrics(tmp_path / "alone" / run.name) if "loss" in r]
        # the whole curve, trunk part included, is the independent run's; CPU arithmetic repeats exactly,
        # and seed noise (other seeds) would be ~1e-2 here, so a small tolerance still tells them apart
        np.testing.assert_allclose(branch_curve, alone_curve, rtol=1e-5)
        assert float(rows[run.name]["eval_loss"]) == pytest.approx(alone.eval_loss, rel=1e-5)
    # a second call trains nothing: not the trunk, not a branch
    again = run_sweep(plan, tmp_path / "sweep", quiet=True)
    assert again.ran == [] and again.skipped == len(plan.runs)


def test_utilization_is_computed_from_the_sweeps_own_records(tmp_path):
    plan = make_plan(spec_from_dict(micro(**BRANCHED)))
    (trunk,) = plan.trunks
    first, second, _unfinished = plan.runs
    assert sweep_utilization(plan, tmp_path, peak=1e9) is None  # nothing finished yet
    # the trunk: 20 s of wall time, its steps 2 s each; a branch's curve begins with the trunk's lines
    trunk_path = trunk_dir(tmp_path, trunk)
    trunk_path.mkdir(parents=True)
    write_metrics(trunk_path, [{"step": s, "loss": 1.0, "step_time_s": 2.0} for s in range(trunk.steps)])
    (trunk_path / WALL_FILE).write_text("20.0\n")
    for step in trunk.branch_steps:
        (trunk_path / "checkpoints" / str(step)).mkdir(parents=True)
    for run in (first, second):  # the third has not finished, so it does not count
        run_dir = tmp_path / "runs" / run.name
        lines = [{"step": s, "loss": 1.0, "step_time_s": 5.0 if s < run.branch_step else 0.5} for s in range(run.steps)]
        write_metrics(run_dir, lines)
        write_result(run_dir, result_row(run, run_dir, "done", wall_s=10.0))
    usage = sweep_utilization(plan, tmp_path, peak=1e9)
    flops = trunk.flops + first.trained_flops + second.trained_flops
    step_s = 2.0 * trunk.steps + 0.5 * (first.steps - first.branch_step + second.steps - second.branch_step)
    assert (usage.flops, usage.wall_s, usage.step_s, usage.runs, usage.trunks) == (
        pytest.approx(flops),
        40.0,
        step_s,
        2,
        1,
    )
    assert usage.of_peak == pytest.approx(flops / (40.0 * 1e9))
    assert f"compute utilization {flops / 4e10:.1%} of the measured peak" in usage.describe()
    assert f"the training steps alone ran at {flops / (step_s * 1e9):.1%} MFU" in usage.describe()


def test_lr_multipliers_run_each_cell_at_each_learning_rate_with_its_own_trunk():
    plan = make_plan(spec_from_dict(micro(**BRANCHED, rules__lr_multipliers=[0.5, 1, 2])))
    assert len(plan.runs) == 9 and len(plan.trunks) == 3
    for run in plan.runs:
        assert run.name.split("-")[3] == f"lr{run.lr_multiplier:g}x"
        assert run.lr == pytest.approx(3e-3 * (run.size / 1e4) ** -0.25 * run.lr_multiplier)
        (trunk,) = [t for t in plan.trunks if run.name in t.runs]
        assert trunk.config.optimizer.lr == run.lr
    with pytest.raises(SpecError, match=r"rules\.lr_multipliers: every value must be positive"):
        make_plan(spec_from_dict(micro(rules__lr_multipliers=[0, 1])))


def test_a_size_at_one_budget_trains_on_its_own():
    # each budget picks its own two sizes, so no size has two token counts and no trunk would be shared
    iso = {"budgets": [1e9, 8e9], "sizes_per_budget": 2, "tokens_per_param": [2, 40]}
    spec = micro(**BRANCHED, isoflop=iso, family__head_dim=8, config__train__seq_len=32)
    spec["rules"]["warmup_tokens_per_param"] = 0.1
    plan = make_plan(spec_from_dict(spec))
    assert plan.trunks == () and len({run.config.model.d_model for run in plan.runs}) == 4
    for run in plan.runs:
        assert run.trunk is None and run.config.schedule.name == "wsd" and run.config.checkpoint.at_steps == []
        assert run.trained_flops == run.flops and not run.config.checkpoint.enabled
    assert plan.trained_flops == plan.total_flops


def test_a_trunk_and_its_branches_run_one_compiled_program():
    from scalelab.data import make_source
    from scalelab.train.trainer import Trainer

    plan = make_plan(spec_from_dict(micro(**BRANCHED)))

    def program(cfg):
        trainer = Trainer.build(cfg)
        batch = trainer.put_batch(make_source(cfg, *trainer.data_shard()).batch(0))
        return trainer.lower(trainer.abstract_state(), batch).as_text()

    trunk = program(plan.trunks[0].config)
    assert all(program(run.config) == trunk for run in plan.runs[:2])
