"""Sweep specs and plans: exact arithmetic, the family rule, per-size rules, shards and plan-time errors."""

from __future__ import annotations

import math

import pytest

from scalelab.cli import main
from scalelab.data.objectives import model_lengths
from scalelab.model.counting import count_params, flops_per_token
from scalelab.scaling.sweep.plan import make_plan, parse_shard, shard_runs
from scalelab.scaling.sweep.plan_table import format_plan
from scalelab.scaling.sweep.probe import ProbePoint, estimate
from scalelab.scaling.sweep.spec import load_spec, spec_from_dict
from scalelab.scaling.sweep.spec_types import PowerRule, SpecError
from tests.scaling.sweep.specs import micro, write_spec

AUTO = {"budgets": [1e11, 1e12], "sizes_per_budget": 3, "tokens_per_param": [2, 40]}


def auto_spec(**changes):
    """Per-budget sizes spanning a tokens-per-parameter window, on a finer ladder (head_dim 8)."""
    return micro(isoflop=dict(AUTO), config__train__seq_len=32, family__head_dim=8, **changes)


def test_plan_arithmetic_is_exact_and_budgets_hold_within_rounding():
    plan = make_plan(spec_from_dict(auto_spec()))
    assert len(plan.runs) == 6
    for run in plan.runs:
        cfg = run.config
        counts = count_params(cfg.model)
        fpt = flops_per_token(cfg.model, cfg.train.seq_len, model_lengths(cfg))  # as the loop counts MFU
        tokens_per_step = run.batch_size * cfg.train.seq_len
        assert (run.n_total, run.n_nonembed, run.size) == (counts.total, counts.non_embedding, counts.non_embedding)
        assert run.flops_per_token == fpt
        assert run.tokens == run.steps * tokens_per_step == cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
        assert run.flops == fpt * run.tokens
        # D = C / FLOPs-per-token(N), rounded to whole steps: C misses the budget by at most half a step
        assert abs(run.flops - run.budget) <= fpt * tokens_per_step / 2
    assert plan.total_flops == sum(run.flops for run in plan.runs)


def test_isoflop_sizes_span_each_budget_in_log_n_and_trade_n_for_d():
    plan = make_plan(spec_from_dict(auto_spec()))
    for budget in AUTO["budgets"]:
        runs = [run for run in plan.runs if run.budget == budget]
        sizes = [run.size for run in runs]
        assert len(runs) == 3 and sizes == sorted(set(sizes))
        assert [run.tokens for run in runs] == sorted((run.tokens for run in runs), reverse=True)
        # the ends of the range sit at the ladder rungs nearest the tokens-per-parameter window
        assert runs[0].tokens / runs[0].size > 10 and runs[-1].tokens / runs[-1].size < 4
    low, high = (make_plan(spec_from_dict(auto_spec())).runs[i].size for i in (3, 5))
    assert low < math.sqrt(low * high) < high
    # a bigger budget shifts the whole size range up
    assert plan.runs[3].size > plan.runs[0].size and plan.runs[5].size > plan.runs[2].size


def test_one_ladder_cut_by_a_tokens_per_param_window_shifts_with_budget_and_shares_trunks():
    iso = {"budgets": [2e8, 1e9, 5e9], "sizes": [3e3, 1.2e4], "tokens_per_param": [0.5, 10]}
    spec = micro(isoflop=iso, branches={"cooldown_fraction": 0.2}, rules__warmup_tokens_per_param=0.1)
    plan = make_plan(spec_from_dict(spec))
    # D/N of 3.1k and 12.4k: 1.4 and 0.13 at 2e8, 7.0 and 0.63 at 1e9, 35 and 3.1 at 5e9
    assert [run.name for run in plan.runs] == [
        "iso-C2e8-d16l1-s0",
        "iso-C1e9-d16l1-s0",
        "iso-C1e9-d32l1-s0",
        "iso-C5e9-d32l1-s0",
    ]
    assert all(0.5 <= run.tokens / run.size <= 10 for run in plan.runs)
    assert [trunk.runs for trunk in plan.trunks] == [
        ("iso-C2e8-d16l1-s0", "iso-C1e9-d16l1-s0"),
        ("iso-C1e9-d32l1-s0", "iso-C5e9-d32l1-s0"),
    ]


@pytest.mark.parametrize(
    ("iso", "problem"),
    [
        (
            {"budgets": [2e8, 1e11], "sizes": [3e3, 1.2e4]},
            r"budget 1e\+11 FLOPs runs none of the sizes: .* \[0.5, 10\]",
        ),
        ({"budgets": [2e8], "sizes": [3e3, 5.5e4]}, r"isoflop.sizes 5.5e\+04: no budget runs them"),
    ],
)
def test_a_window_that_leaves_a_budget_or_a_size_without_runs_is_an_error(iso, problem):
    with pytest.raises(SpecError, match=problem):
        make_plan(spec_from_dict(micro(isoflop=dict(iso, tokens_per_param=[0.5, 10]))))


def test_family_rule_shapes_and_per_size_rules():
    spec = spec_from_dict(auto_spec(rules__batch_size={"value": 8, "ref_params": 2e4, "exponent": 1, "multiple": 8}))
    for run in make_plan(spec).runs:
        model = run.config.model
        assert model.d_model % 8 == 0 and model.n_heads == model.d_model // 8 and model.dim_per_head == 8
        assert model.n_layers == max(1, round(model.d_model / 32)) and model.ffn_dim == 4 * model.d_model
        assert run.lr == pytest.approx(3e-3 * (run.size / 1e4) ** -0.25)
        assert run.config.optimizer.lr == run.lr
        assert run.batch_size == max(8, round(8 * run.size / 2e4 / 8) * 8) == run.config.train.batch_size
        assert run.config.train.eval_every == math.ceil(run.steps / 2)
        assert run.config.checkpoint.every == math.ceil(run.steps / 2)


def test_power_rule_clamps_and_rounds_inside_its_bounds():
    rule = PowerRule(value=24, ref_params=1e6, exponent=0.5, min=16, max=64, multiple=16)
    assert [rule.at(n) for n in (1e4, 1e6, 2.25e6, 1e8)] == [16, 32, 32, 64]
    assert PowerRule(value=1e-3, ref_params=1e6, exponent=-1).at(1e7) == pytest.approx(1e-4)


def test_grid_plans_every_size_times_every_token_budget_and_seed():
    spec = micro(isoflop=None, grid={"sizes": [3e3, 1.2e4], "tokens": [2000, 4000]}, seeds=[0, 1])
    plan = make_plan(spec_from_dict(spec))
    assert len(plan.runs) == 2 * 2 * 2
    assert {(run.size, run.seed) for run in plan.runs} == {(s, seed) for s in (3120, 12384) for seed in (0, 1)}
    for run in plan.runs:
        assert run.config.train.seed == run.seed and run.budget is None
        target = 2000 if "D2e3" in run.name else 4000
        assert abs(run.tokens - target) <= 8 * 16 / 2


def test_log_range_and_named_spec_loading(tmp_path):
    spec = spec_from_dict(micro(isoflop={"budgets": {"min": 1e11, "max": 1e13, "count": 3}, "sizes": [3e3]}))
    assert spec.runs.budgets == pytest.approx((1e11, 1e12, 1e13))
    # YAML 1.1 reads 1e11 (no dot) as a string; it is still a number
    spec = spec_from_dict(micro(isoflop={"budgets": {"min": "1e11", "max": "1e13", "count": 3}, "sizes": ["3e3"]}))
    assert spec.runs.budgets == pytest.approx((1e11, 1e12, 1e13)) and spec.runs.sizes == (3e3,)
    assert load_spec(write_spec(tmp_path, micro())).name == "micro"


@pytest.mark.parametrize(
    ("changes", "problem", "fix"),
    [
        ({"isoflop__budgets": [1e3]}, "too small for", "raise it to at least"),
        ({"isoflop": dict(AUTO, budgets=[1e7])}, "too small for the smallest model", "raise the budget"),
        ({"isoflop__sizes": []}, "isoflop.sizes is empty", "list at least one"),
        ({"isoflop__sizes": None}, "size list is empty", "give sizes"),
        ({"isoflop__budgets": [2e8, 2e8]}, "more than once", "remove"),
        ({"isoflop__sizes": [1.2e4, 1.3e4]}, "duplicate runs", "space the sizes further apart"),
        ({"seeds": [1, 1]}, "more than once", "remove"),
        ({"isoflop": dict(AUTO, sizes_per_budget=9)}, "duplicate runs", "fewer sizes"),
        ({"rules__batch_size": {"value": 8, "min": 32, "max": 16}}, "above max", "swap or fix"),
        ({"rules__batch_size": {"value": 8, "multiple": 8, "max": 20}}, "not a positive multiple", "make it one"),
        ({"rules__lr": {"value": -1}}, "must be positive", "rules.lr"),
        ({"rules__warmup_fraction": 1.5}, "warmup_fraction", "[0, 1)"),
        ({"isoflop": dict(AUTO, sizes=[1e4])}, "not both", "either sizes"),
        ({"grid": {"sizes": [1e4], "tokens": [1e5]}}, "exactly one of", "grid"),
        ({"rules__batchsize": 8}, "unknown key 'rules.batchsize'", "did you mean 'rules.batch_size'"),
        ({"config__train__batch_size": 12, "config__train__grad_accum": 8}, "base config", "grad_accum"),
        ({"base": "no-such-config"}, "not found", "give a YAML path"),
        ({"family__max_d_model": 64, "isoflop__sizes": [1e6]}, "above the largest model", "raise family.max_d_model"),
        # malformed shapes: a one-line error naming the key, the value and what is allowed, not a traceback
        ({"rules__lr": {"exponent": -0.5}}, "rules.lr.value is missing (got {'exponent': -0.5})", "ref_params"),
        ({"family": 3}, "family: expected a mapping of aspect_ratio, head_dim", "got int 3"),
        ({"rules": [1]}, "rules: expected a mapping of lr, batch_size", "got list [1]"),
        ({"base": 5}, "base: expected the name or path of a training config", "got int 5"),
        ({"config": [1]}, "config: expected a mapping of training-config keys", "got list [1]"),
        ({"isoflop": "abc"}, "isoflop: expected a mapping of budgets", "got str 'abc'"),
        ({"isoflop": [1, 2]}, "isoflop: expected a mapping of budgets", "got list [1, 2]"),
        ({"isoflop": None, "grid": "abc"}, "grid: expected a mapping of sizes and tokens", "got str 'abc'"),
        ({"family__aspect_ratio": math.nan}, "family.aspect_ratio", "expected a finite number, got nan"),
        ({"family__ffn_multiplier": math.inf}, "family.ffn_multiplier", "expected a finite number, got inf"),
        ({"rules__lr": math.nan}, "rules.lr.value", "expected a finite number, got nan"),
        ({"rules__lr": {"value": 1e-3, "exponent": math.nan}}, "rules.lr.exponent", "expected a finite number"),
        ({"rules__warmup_fraction": math.nan}, "rules.warmup_fraction", "expected a finite number, got nan"),
        ({"rules__batch_size": 0.3}, "rules.batch_size.value must be a whole number of sequences, got 0.3", "round"),
        # numbers in lists and ranges: a string that is no number, a bool, a non-finite string, a list
        ({"isoflop__budgets": ["abc"]}, "isoflop.budgets[0]: expected a number", "got 'abc'"),
        ({"isoflop__budgets": [True]}, "isoflop.budgets[0]: expected a finite number", "got True"),
        ({"isoflop__budgets": ["nan"]}, "isoflop.budgets[0]: expected a finite number", "got nan"),
        ({"isoflop__budgets": {"min": [1], "max": 1e13, "count": 2}}, "budgets.min: expected a finite", "got [1]"),
    ],
)
def test_bad_specs_fail_at_plan_time_naming_problem_and_fix(changes, problem, fix):
    with pytest.raises(SpecError) as error:
        make_plan(spec_from_dict(micro(**changes)))
    assert problem in str(error.value) and fix in str(error.value)


def test_a_malformed_spec_file_is_a_one_line_cli_error(tmp_path, capsys):
    path = write_spec(tmp_path, micro(rules__lr={"exponent": -0.5}))
    assert main(["sweep", "plan", str(path), "--no-probe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scalelab sweep: error: {path}: rules.lr.value is missing") and err.count("\n") == 1


def test_a_mistake_under_config_names_the_spec_file_and_where_to_fix_it(tmp_path, capsys):
    path = write_spec(tmp_path, micro(config__train__stepz=3))
    assert main(["sweep", "plan", str(path), "--no-probe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scalelab sweep: error: {path}: the base config with the spec's config: overrides")
    assert "unknown key 'train.stepz'; did you mean 'train.steps'?" in err and "under config: in the spec" in err


@pytest.mark.parametrize("steps", ["0", "1", "-3", "ten"])
def test_too_few_probe_steps_is_a_usage_error_naming_the_option(tmp_path, capsys, steps):
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "plan", str(write_spec(tmp_path, micro())), "--probe-steps", steps])
    assert stop.value.code == 2
    assert f"--probe-steps: expected a whole number of steps, 2 or more, got '{steps}'" in capsys.readouterr().err


def test_shards_partition_the_runs_exactly_and_balance_compute():
    runs = make_plan(spec_from_dict(auto_spec(seeds=[0, 1, 2]))).runs
    assert len(runs) == 18
    for count in (1, 2, 3, 5, 18, 25):
        shards = [shard_runs(runs, index, count) for index in range(count)]
        names = [run.name for shard in shards for run in shard]
        assert sorted(names) == sorted(run.name for run in runs)  # every run once, none twice
        for shard in shards:  # plan order is kept inside a shard
            assert [runs.index(run) for run in shard] == sorted(runs.index(run) for run in shard)
        loads = [sum(run.flops for run in shard) for shard in shards]
        assert max(loads) - min(loads) <= max(run.flops for run in runs)
        assert shard_runs(runs, 0, count) == shards[0]  # deterministic: independent jobs agree


@pytest.mark.parametrize("text", ["2/2", "-1/3", "1", "a/b", "0/0"])
def test_bad_shard_argument_shows_the_form(text):
    with pytest.raises(SpecError, match="0/4"):
        parse_shard(text)


def test_estimate_adds_fixed_cost_steps_and_evals():
    plan = make_plan(spec_from_dict(micro()))
    small, large = plan.runs[0], plan.runs[1]  # 16x1 and 32x1 at the first budget

    def step_flops(run):
        return run.flops_per_token * run.batch_size * 16

    points = [ProbePoint("a", step_flops(small), 0.01, 2.0), ProbePoint("b", step_flops(large), 0.03, 4.0)]
    result = estimate(plan, points)
    evals_small = math.ceil(small.steps / small.config.train.eval_every) * 1 * 0.01 / 3
    assert result.per_run_s[small.name] == pytest.approx(2.0 + small.steps * 0.01 + evals_small)
    assert result.per_run_s[large.name] > result.per_run_s[small.name] - 2.0
    assert result.total_s == pytest.approx(sum(result.per_run_s.values())) and result.beyond == 0


def test_sweep_plan_cli_prints_the_table_and_total(tmp_path, capsys):
    path = write_spec(tmp_path, micro())
    assert main(["sweep", "plan", str(path), "--no-probe"]) == 0
    out = capsys.readouterr().out
    plan = make_plan(load_spec(path))
    assert format_plan(plan) in out and f"total compute {plan.total_flops:.3g} FLOPs" in out
    assert main(["sweep", "plan", str(path), "--no-probe", "--shard", "1/2"]) == 0
    assert "shard 1/2 has 2" in capsys.readouterr().out
    assert main(["sweep", "plan", str(write_spec(tmp_path, micro(seeds=[0, 0]), "bad.yaml"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scalelab sweep: error:") and "bad.yaml" in err and "more than once" in err


def test_plan_says_which_fits_it_supports_and_why_not():
    two_sizes = make_plan(spec_from_dict(micro()))  # 2 budgets x 2 sizes
    text = format_plan(two_sizes)
    assert "approach 2: no (approach 2 needs at least 2 isoFLOP groups" in text
    assert "0 of 2 qualify (2 have fewer than 3 sizes" in text
    assert "approach 3: no (approach3 has 5 parameters but only 4 rows" in text
    # a shard's printout judges the whole plan: a shard alone would support even less
    assert text.split("\n\n")[1] == format_plan(two_sizes, shard_runs(two_sizes.runs, 0, 2)).split("\n\n")[1]
    three_sizes = format_plan(make_plan(spec_from_dict(auto_spec())))  # 2 budgets x 3 sizes
    assert "approach 2: no intervals (no points to spare)" in three_sizes
    assert "approach 1: yes" in three_sizes


def test_a_mup_spec_plans_mup_runs_and_says_what_transfers():
    mup = {"model": {"parametrization": "mup", "mup_base_width": 16}}
    plan = make_plan(spec_from_dict(micro(config__model=mup["model"], rules__lr=3e-3)))
    assert {run.config.model.parametrization for run in plan.runs} == {"mup"}
    assert {run.lr for run in plan.runs} == {3e-3}  # one learning rate, tuned at the base width, for every width
    assert "muP: d_model 16 to 32 take the hyperparameters tuned at d_model 16" in format_plan(plan)
    scaled = make_plan(spec_from_dict(micro(config__model=mup["model"])))
    assert "rules.lr also scales with N (exponent -0.25), on top of muP" in format_plan(scaled)


def test_a_fixed_head_count_steps_the_ladder_by_two_per_head():
    family = {"aspect_ratio": 32, "n_heads": 2, "ffn_multiplier": 4}
    plan = make_plan(spec_from_dict(micro(family=family, isoflop__sizes=[3e3, 5e3, 1.2e4])))
    widths = sorted({run.config.model.d_model for run in plan.runs})
    assert all(w % 4 == 0 for w in widths) and len(widths) == 3
    for run in plan.runs:
        model = run.config.model
        assert model.n_heads == 2 and model.head_dim == model.d_model // 2
        assert run.n_total == count_params(model).total
    with pytest.raises(SpecError, match=r"family: give head_dim \(n_heads grows with width\) or n_heads"):
        spec_from_dict(micro(family={**family, "head_dim": 16}))
    with pytest.raises(SpecError, match=r"family\.n_heads must be a positive number of heads, got 0"):
        spec_from_dict(micro(family={**family, "n_heads": 0}))
