"""The learning-rate rule: best lr per size from a grid, the power law through them, and a spec that uses it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from scalelab.cli import main
from scalelab.scaling.fit.lr_rule import best_lr, fit_lr_rule
from scalelab.scaling.fit.table import FitInputError, FitWarning, load_table
from scalelab.scaling.sweep.plan import make_plan
from scalelab.scaling.sweep.spec import spec_from_dict
from scalelab.scaling.sweep.spec_types import SpecError
from tests.scaling.sweep.specs import micro


def true_best(n: float) -> float:
    return 3e-3 * (n / 1e5) ** -0.3


def write_grid(path, sizes=(2e4, 1e5, 5e5), multipliers=(0.25, 0.5, 1, 2, 4), centre=1.0):
    """A results table whose loss is a parabola in log lr around true_best(N) x centre."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "N", "D", "C", "eval_loss", "lr", "status"])
        for n in sizes:
            for m in multipliers:
                lr = true_best(n) * m
                loss = 3.0 + 0.1 * np.log(lr / (true_best(n) * centre)) ** 2
                writer.writerow([f"n{n:g}-m{m:g}", n, 20 * n, 120 * n * n, loss, lr, "done"])
    return path


def test_the_rule_recovers_the_best_learning_rates_power_law(tmp_path):
    rule = fit_lr_rule(load_table(write_grid(tmp_path / "grid.csv"), extra=("lr",)))
    assert rule.exponent == pytest.approx(-0.3, abs=1e-6) and rule.r2 == pytest.approx(1.0)
    for n in (2e4, 1e5, 5e5):
        assert rule.at(n) == pytest.approx(true_best(n), rel=1e-6)
    assert not any(cell.at_edge for cell in rule.cells)


def test_an_interior_minimum_is_refined_between_its_neighbours():
    lrs = np.array([1e-3, 2e-3, 4e-3, 8e-3])
    best, edge = best_lr(lrs, 1.0 + np.log(lrs / 3e-3) ** 2)  # the true best lies between grid points
    assert best == pytest.approx(3e-3, rel=1e-6) and not edge


def test_a_best_lr_at_the_grids_edge_is_a_warning(tmp_path):
    path = write_grid(tmp_path / "grid.csv", centre=8.0)  # the best lies beyond the largest multiplier
    with pytest.warns(
        FitWarning, match=r"3 of 3 cells have their lowest loss at the edge .* widen rules\.lr_multipliers"
    ):
        rule = fit_lr_rule(load_table(path, extra=("lr",)))
    assert all(cell.at_edge for cell in rule.cells)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (
            {"multipliers": (0.5, 1)},
            r"has 2 learning rate\(s\) .* needs at least 3: give the sweep rules\.lr_multipliers",
        ),
        ({"sizes": (1e5,)}, r"one model size \(N=1e\+05\); a rule in N needs at least 2 sizes"),
    ],
)
def test_a_grid_that_cannot_give_a_rule_is_an_error(tmp_path, grid, message):
    with pytest.raises(FitInputError, match=message):
        fit_lr_rule(load_table(write_grid(tmp_path / "grid.csv", **grid), extra=("lr",)))


def test_fit_command_writes_the_rule_that_a_spec_then_uses(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.csv")
    assert main(["fit", str(grid), "--approach", "lr", "--out", str(tmp_path / "fit")]) == 0
    out = capsys.readouterr().out
    assert "rules:\n  lr: {value: 0.003, ref_params: 1e+05, exponent: -0.3}" in out
    assert (tmp_path / "fit" / "lr_rule.png").stat().st_size > 0
    saved = json.loads((tmp_path / "fit" / "lr_rule.json").read_text())
    assert saved["lr"]["exponent"] == pytest.approx(-0.3)
    # a spec in tmp_path points at it relative to its own folder, and may still clamp it
    plan = make_plan(
        spec_from_dict(micro(rules__lr={"from_fit": "fit/lr_rule.json", "max": 0.02}), tmp_path / "s.yaml")
    )
    for run in plan.runs:
        assert run.lr == pytest.approx(min(0.02, true_best(run.size)), rel=1e-6)


def test_bad_from_fit_paths_name_the_file_and_the_command(tmp_path, capsys):
    with pytest.raises(
        SpecError, match=r"lr_rule\.json does not exist; write it with `scalelab fit LR_SWEEP --approach lr"
    ):
        spec_from_dict(micro(rules__lr={"from_fit": "fit/lr_rule.json"}), tmp_path / "s.yaml")
    (tmp_path / "other.json").write_text('{"meta": {}}')
    with pytest.raises(
        SpecError, match=r"other\.json is not a learning-rate rule written by `scalelab fit --approach lr`"
    ):
        spec_from_dict(micro(rules__lr={"from_fit": "other.json"}), tmp_path / "s.yaml")
    no_lr = tmp_path / "no-lr.csv"
    no_lr.write_text("N,D,eval_loss\n1e5,1e6,3.0\n")
    assert main(["fit", str(no_lr), "--approach", "lr", "--out", str(tmp_path / "f2")]) == 2
    assert "has no column 'lr'" in capsys.readouterr().err
