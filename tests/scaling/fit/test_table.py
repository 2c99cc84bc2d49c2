"""Reading fit inputs: column mapping, derived C or D, sweep status and curves, and every bad-input error."""

import json
import warnings

import numpy as np
import pytest

from scalelab.scaling.fit.table import Columns, FitInputError, FitWarning, group_by_c, load_table
from tests.scaling.fit.synth import K, isoflop_table, random_table, write_csv, write_sweep


def test_generic_csv_maps_columns_ignores_extras_and_derives_c(tmp_path):
    path = write_csv(
        tmp_path / "t.csv",
        {"params": [1e7, 2e7, 4e7], "tokens": [1e9, 2e9, 3e9], "note": ["a", "b", "c"], "val": [3.0, 2.9, 2.8]},
    )
    t = load_table(path, Columns(n="params", d="tokens", loss="val"))
    np.testing.assert_allclose(t.N, [1e7, 2e7, 4e7])
    np.testing.assert_allclose(t.C, K * t.N * t.D)
    assert t.flops_per_param_token == K
    assert t.columns == {"N": "params", "D": "tokens", "C": "derived", "loss": "val"}
    assert t.labels[0] == "line 2"


def test_c_only_derives_d_and_table_flops_set_k(tmp_path):
    t = load_table(write_csv(tmp_path / "c.csv", {"N": [1e7, 1e8], "C": [6e16, 6e18], "loss": [3.0, 2.5]}))
    np.testing.assert_allclose(t.D, [1e9, 1e10])
    both = load_table(
        write_csv(tmp_path / "b.csv", {"N": [1e7, 1e8], "D": [1e9, 1e10], "C": [7e16, 7e18], "loss": [3, 2]})
    )
    assert both.flops_per_param_token == pytest.approx(7.0)


def test_sweep_prefers_eval_loss_keeps_done_rows_and_reads_curves(tmp_path):
    rng = np.random.default_rng(0)
    table = isoflop_table(rng, np.array([1e17, 1e18]), 3, 0.01)
    root = write_sweep(tmp_path / "sweep", table, rng, steps=20)
    text = (root / "results.csv").read_text().splitlines()
    text[2] = text[2].replace(",done", ",failed")  # the second run (line 3) did not finish
    (root / "results.csv").write_text("\n".join(text) + "\n")
    with pytest.warns(FitWarning, match=r"line 3 \(r001: failed\)"):
        t = load_table(root)
    assert len(t) == 5 and t.columns["loss"] == "eval_loss"
    np.testing.assert_allclose(t.loss, np.delete(table["loss"], 1))
    assert len(t.curves) == 5
    curve = t.curves[0]
    # Step s of 20 has seen s/20 of the run's tokens and FLOPs; step 0 (nothing seen) is dropped.
    np.testing.assert_allclose(curve.C, table["C"][0] * np.arange(1, 20) / 20)
    np.testing.assert_allclose(curve.D, table["D"][0] * np.arange(1, 20) / 20)
    with pytest.warns(FitWarning):
        assert load_table(root / "results.csv", Columns(loss="final_loss")).columns["loss"] == "final_loss"


def test_missing_curve_is_named(tmp_path):
    rng = np.random.default_rng(1)
    root = write_sweep(tmp_path / "s", isoflop_table(rng, np.array([1e17, 1e18]), 3, 0.01), rng, steps=10)
    (root / "runs" / "r004" / "metrics.jsonl").write_text(json.dumps({"step": 3, "eval_loss": 3.0}) + "\n")
    with pytest.warns(FitWarning, match="left out of approach 1: r004"):
        t = load_table(root)
    assert [c.run for c in t.curves] == ["r000", "r001", "r002", "r003", "r005"]


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("nan", "missing or not a number"),
        ("", "missing or not a number"),
        ("inf", "infinite"),
        ("-2", "zero or negative"),
        ("0", "zero or negative"),
    ],
)
def test_bad_values_name_their_rows(tmp_path, value, what):
    loss = ["3.0", "2.9", value, "2.7"]
    path = write_csv(
        tmp_path / "bad.csv", {"run": ["a", "b", "c", "d"], "N": [1e7, 2e7, 3e7, 4e7], "D": [1e9] * 4, "loss": loss}
    )
    with pytest.raises(FitInputError, match=rf"loss is {what} in line 4 \(run c\)"):
        load_table(path)


def test_bad_rows_in_several_columns_are_all_reported(tmp_path):
    path = write_csv(tmp_path / "bad.csv", {"N": [1e7, -1, 3e7], "D": [1e9, 1e9, "inf"], "loss": [3, 2, 1]})
    with pytest.raises(FitInputError, match=r"N is zero or negative in line 3; D is infinite in line 4"):
        load_table(path)


def test_missing_columns_say_which_flag_fixes_them(tmp_path):
    with pytest.raises(FitInputError, match=r"no loss column.*--loss-col"):
        load_table(write_csv(tmp_path / "a.csv", {"N": [1], "D": [1], "ppl": [1]}))
    with pytest.raises(FitInputError, match=r"neither a token column 'D' nor a FLOP column 'C'.*--d-col or --c-col"):
        load_table(write_csv(tmp_path / "b.csv", {"N": [1], "loss": [1]}))
    with pytest.raises(FitInputError, match=r"no parameter-count column 'params'.*--n-col"):
        load_table(write_csv(tmp_path / "c.csv", {"N": [1], "D": [1], "loss": [1]}), Columns(n="params"))
    with pytest.raises(FitInputError, match="no column 'val'"):
        load_table(write_csv(tmp_path / "d.csv", {"N": [1], "D": [1], "loss": [1]}), Columns(loss="val"))


def test_paths_that_are_not_inputs(tmp_path):
    with pytest.raises(FitInputError, match="does not exist"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(FitInputError, match=r"has no results\.csv"):
        load_table(tmp_path)
    (tmp_path / "fit.json").write_text("{}")
    with pytest.raises(FitInputError, match="is a fit output directory"):
        load_table(tmp_path)


@pytest.mark.parametrize(
    ("statuses", "advice"),
    [
        (["running"], r"no row has status 'done'; finish the sweep"),
        (["diverged", "running"], r"\(1 of 2 runs diverged, and re-running a sweep does not retry them\); lower the"),
    ],
)
def test_no_done_rows_is_an_error_with_the_fix_that_applies(tmp_path, statuses, advice):
    n = len(statuses)
    columns = {"run": list("ab")[:n], "N": [1e7] * n, "D": [1e9] * n, "loss": [3.0] * n, "status": statuses}
    path = write_csv(tmp_path / "r.csv", columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        with pytest.raises(FitInputError, match=advice):
            load_table(path)


def test_a_row_with_more_fields_than_the_header_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("N,D,loss\n1e6,1e8,3.0\n2e6,1e8,2.9,7\n")  # a stray field shifts nothing visibly: refuse it
    with pytest.raises(FitInputError, match="line 3 has 4 fields but the header names 3 columns; remove the extra"):
        load_table(path)


def test_a_sweep_with_no_finished_run_says_to_run_the_sweep(tmp_path):
    from scalelab.scaling.sweep.results import rebuild_csv

    rebuild_csv(tmp_path, ["a", "b"])  # what `sweep run` leaves before its first run finishes
    with pytest.raises(FitInputError, match=r"lists no finished run yet; run the sweep \(scalelab sweep run\)"):
        load_table(tmp_path)
    (tmp_path / "t.csv").write_text("N,D,loss\n")  # any other CSV: the fix is to add rows
    with pytest.raises(FitInputError, match="has a header but no rows; add one row per run"):
        load_table(tmp_path / "t.csv")


def test_group_by_c_splits_on_relative_gaps():
    c = np.array([1.0e18, 1.04e18, 3e18, 0.97e18, 3.1e18, 1e19])
    groups = group_by_c(c, rtol=0.1)
    assert [g.tolist() for g in groups] == [[0, 1, 3], [2, 4], [5]]
    assert len(group_by_c(random_table(np.random.default_rng(0), 20, 0.0)["C"], rtol=1e-9)) == 20
