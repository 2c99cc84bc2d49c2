"""`scalelab fit` and `scalelab plot` end to end through train.cli.main."""

import json

import numpy as np
import pytest

from scalelab.cli import main
from tests.scaling.fit.synth import isoflop_table, random_table, write_csv, write_sweep

PLOTS = ("loss_curves", "isoflop_profiles", "optimal_allocation", "loss_contours", "residuals")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("cli") / "sweep"
    return write_sweep(root, isoflop_table(rng, np.geomspace(1e17, 1e20, 4), 6, 0.01), rng, steps=40)


@pytest.fixture(scope="module")
def fitted(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    code = main(["fit", str(sweep), "--bootstrap", "60", "--budget", "1e21", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "fit.json").read_text())


def test_fit_writes_the_contract_schema(fitted):
    _, fit = fitted
    expected = {
        "approach1": ("a", "b"),
        "approach2": ("a", "b"),
        "approach3": ("E", "A", "B", "alpha", "beta"),
        "kaplan": ("N_c", "D_c", "alpha_N", "alpha_D"),
        "L_N": ("E", "A", "alpha"),
        "L_D_E0": ("E", "A", "alpha"),
    }
    for name, params in expected.items():
        obj = fit[name]
        assert obj["converged"] is True and obj["n_points"] > 0, name
        for p in params:
            assert isinstance(obj[p], float), (name, p)
            if not (name.endswith("_E0") and p == "E"):
                lo, hi = obj["ci"][p]
                assert lo <= obj[p] <= hi or np.isclose(lo, obj[p]) or np.isclose(hi, obj[p]), (name, p)
    # L_C fits the 4 budgets' frontier with 3 parameters: 1 point to spare is too few for intervals.
    l_c = fit["L_C"]
    assert isinstance(l_c["alpha"], float) and l_c["ci"] == dict.fromkeys(("E", "A", "alpha", "loss_pred"))
    assert l_c["ci_undetermined"] == "only 1 point to spare, 2 needed"
    a3 = fit["approach3"]
    assert a3["starts"] == 4500 and 1 <= a3["starts_at_best"] <= 4500
    assert a3["r2"] > 0.9 and len(a3["residuals"]["values"]) == a3["n_points"] == 24
    for name in ("approach1", "approach2", "approach3", "kaplan"):
        obj = fit[name]
        assert obj["budget"] == 1e21
        for q in ("N_opt", "D_opt"):
            lo, hi = obj["ci"][q]
            assert lo < obj[q] < hi, (name, q)
    assert fit["approach3"]["loss_pred"] > fit["approach3"]["E"]
    assert fit["approach2"]["loss_pred"] is None  # approaches 1 and 2 have no loss model
    assert fit["meta"]["columns"]["loss"] == "eval_loss" and fit["meta"]["curves"] == 24


def test_fit_prints_a_table(sweep, tmp_path, capsys):
    assert (
        main(["fit", str(sweep), "--approach", "2", "--bootstrap", "20", "--budget", "1e21", "--out", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert "approach 2: isoFLOP parabolas" in out
    assert "compute-optimal allocation at C = 1e+21 FLOPs" in out
    assert f"wrote {tmp_path / 'fit.json'}" in out
    assert set(json.loads((tmp_path / "fit.json").read_text())) == {"meta", "approach2"}


def test_plot_from_a_fit_directory(fitted, capsys):
    out, _ = fitted
    assert main(["plot", str(out)]) == 0
    for name in PLOTS:
        for ext in ("png", "svg"):
            path = out / f"{name}.{ext}"
            assert path.stat().st_size > 5000, path
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "residuals.svg").read_text()[:2000]
    assert capsys.readouterr().out.count("wrote ") == 2 * len(PLOTS)


def test_plot_fits_a_mapped_csv_first_and_replots_from_its_fit(tmp_path):
    rng = np.random.default_rng(5)
    t = random_table(rng, 40, 0.01)
    columns = {"params": t["N"], "tokens": t["D"], "note": ["x"] * 40, "val_loss": t["loss"]}
    csv = write_csv(tmp_path / "table.csv", columns)
    flags = ["--n-col", "params", "--d-col", "tokens", "--loss-col", "val_loss"]
    assert main(["plot", str(csv), *flags, "--approach", "3", "--bootstrap", "0"]) == 0
    out = tmp_path / "fit"
    fit = json.loads((out / "fit.json").read_text())
    assert fit["approach3"]["converged"] and fit["meta"]["columns"] == {
        "N": "params",
        "D": "tokens",
        "C": "derived",
        "loss": "val_loss",
    }
    for name in ("loss_contours", "residuals", "optimal_allocation", "loss_curves"):
        assert (out / f"{name}.png").stat().st_size > 5000
    assert not (out / "isoflop_profiles.png").exists()  # no approach 2 was fitted
    # The fit directory remembers how to read its input.
    assert main(["plot", str(out), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "loss_contours.svg").stat().st_size > 5000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "missing.csv"], "missing.csv does not exist"),
        (["fit", "{sweep}", "--grid", "alpha"], "--grid 'alpha': expected [LAW.]PARAM=START:STOP:STEP"),
        (["fit", "{sweep}", "--grid", "alpha=0,nan"], "--grid 'alpha=0,nan': expected"),
        (["fit", "{sweep}", "--grid", "kaplan.alpha=0,1"], "kaplan has no parameter 'alpha'"),
        (["fit", "{sweep}", "--loss-col", "ppl"], "has no column 'ppl'"),
        (["fit", "{flat}", "--approach", "2"], "approach 2 needs several compute budgets"),
    ],
)
def test_user_errors_exit_2_with_the_fix(sweep, tmp_path, capsys, argv, message):
    N = np.geomspace(1e7, 1e8, 4)
    flat = write_csv(tmp_path / "flat.csv", {"N": N, "C": np.full(4, 1e18), "loss": [3.0, 2.9, 2.95, 3.1]})
    argv = [a.format(sweep=sweep, flat=flat) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scalelab {argv[0]}: error: ") and message in err


def test_warnings_are_printed_once_per_problem(tmp_path, capsys):
    rng = np.random.default_rng(2)
    csv = write_csv(tmp_path / "iso.csv", isoflop_table(rng, np.geomspace(1e17, 1e19, 3), 5, 0.01))
    assert main(["fit", str(csv), "--approach", "1", "--bootstrap", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("scalelab fit: warning: no training curves") == 1
