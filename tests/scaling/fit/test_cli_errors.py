"""`scalelab fit` and `scalelab plot` refuse bad options, inputs and outputs with one line, never a traceback."""

import json

import numpy as np
import pytest

from scalelab.cli import main
from tests.scaling.fit.synth import isoflop_table, random_table, write_csv


@pytest.fixture
def table(tmp_path):
    return write_csv(tmp_path / "t.csv", random_table(np.random.default_rng(0), 30, 0.01))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--huber-delta", "0", "'0': the Huber delta must be a number above 0 and finite"),
        ("--huber-delta", "-1", "'-1': the Huber delta must be a number above 0"),
        ("--c-rtol", "nan", "'nan': the isoFLOP tolerance must be a number above 0"),
        ("--budget", "-1", "'-1': the budget must be a number above 0"),
        ("--budget", "-1e12", "'-1e12': the budget must be a number above 0"),  # not taken for an option
        ("--huber-delta", "-.5E-3", "'-.5E-3': the Huber delta must be a number above 0"),
        ("--budget", "inf", "'inf': the budget must be a number above 0 and finite"),
        ("--ci", "1", "'1': the interval level must be a number above 0 and below 1"),
        ("--bootstrap", "-3", "'-3': the number of resamples must be a whole number, 0 or more"),
    ],
)
@pytest.mark.parametrize("command", ["fit", "plot"])
def test_options_out_of_range_are_refused_before_fitting(table, capsys, command, option, value, message):
    with pytest.raises(SystemExit) as stop:
        main([command, str(table), option, value])
    assert stop.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err
    assert not (table.parent / "fit").exists()


def test_no_fittable_approach_exits_2_saying_what_each_needs(tmp_path, capsys):
    one = write_csv(tmp_path / "one.csv", {"N": [1e7], "D": [1e9], "loss": [3.0]})
    assert main(["fit", str(one), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scalelab fit: error: no approach could be fitted to {one.resolve()}:\n  approach1: ")
    assert "\n  approach3: approach3 needs several values of N" in err and "\n  L_C: " in err
    assert not (tmp_path / "fit").exists()  # no empty output directory left behind
    (tmp_path / "mine").mkdir()
    assert main(["fit", str(one), "--bootstrap", "0", "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine").is_dir()  # a directory the user made stays


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"N,D,loss\n", "has a header but no rows; add one row per run"),
        (b"N,D,loss\n1e7,1e9,3.0\n2e7,1e9,2\xe9\n", "line 3 is not UTF-8 text (byte 0xe9); save the table as UTF-8"),
    ],
)
def test_unreadable_tables_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    assert main(["fit", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    d = random_table(np.random.default_rng(1), 12, 0.01)
    path = write_csv(tmp_path / "bom.csv", {"N": d["N"], "D": d["D"], "loss": d["loss"]})
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert main(["fit", str(path), "--approach", "3", "--bootstrap", "0"]) == 0


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_an_unwritable_out_is_refused_before_fitting(table, tmp_path, capsys, monkeypatch, kind):
    from scalelab.cli import fit as fit_cli

    (tmp_path / "afile").write_text("")
    if kind == "file":
        out = tmp_path / "afile"
        expected = f"--out {out}: a file of that name exists; name a directory"
    else:
        out = tmp_path / "afile" / "fit"  # (a read-only directory fails the same way, but not for root)
        expected = f"--out {out}: cannot write there (Not a directory); name a directory you can write"
    monkeypatch.setattr(fit_cli, "fit_input", lambda *a: pytest.fail("fitted before checking --out"))
    assert main(["fit", str(table), "--out", str(out)]) == 2
    assert expected in capsys.readouterr().err


def test_plot_of_a_csv_never_replaces_a_saved_fit(table, capsys):
    assert main(["fit", str(table), "--approach", "3", "--bootstrap", "0", "--budget", "1e21"]) == 0
    saved = table.parent / "fit" / "fit.json"
    before = saved.read_bytes()
    assert main(["plot", str(table), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{saved} already holds a fit; plot it with `scalelab plot {saved.parent}`" in err
    assert saved.read_bytes() == before
    assert main(["plot", str(saved.parent)]) == 0  # the fix the message names works

    misspelled = table.parent / "tabel.csv"  # next to that fit: the missing file is the error to report
    assert main(["plot", str(misspelled), "--bootstrap", "0"]) == 2
    assert (
        f"scalelab plot: error: {misspelled} does not exist; pass a sweep directory or a CSV file"
        in capsys.readouterr().err
    )


def test_fitting_options_on_a_saved_fit_are_an_error_with_the_refit_not_ignored(table, capsys):
    assert main(["fit", str(table), "--approach", "3", "--bootstrap", "0"]) == 0
    saved = table.parent / "fit" / "fit.json"
    before = saved.read_bytes()
    assert main(["plot", str(saved.parent), "--budget", "1e21", "--grid", "alpha=0.3,0.5"]) == 2
    err = capsys.readouterr().err
    assert f"{saved} is a saved fit, drawn as it was made, so --budget 1e+21, --grid alpha=0.3,0.5 would" in err
    refit = f"scalelab fit {table.resolve()} --budget 1e+21 --grid alpha=0.3,0.5 --out {saved.parent}"
    assert f"refit with `{refit}`" in err
    assert saved.read_bytes() == before and not list(saved.parent.glob("*.png"))
    assert main([*refit.split()[1:], "--approach", "3", "--bootstrap", "0"]) == 0  # the refit it names works
    assert json.loads(saved.read_text())["approach3"]["budget"] == 1e21


def test_plot_of_a_fit_json_without_meta_names_the_fix(tmp_path, capsys):
    (tmp_path / "fit.json").write_text(json.dumps({"approach3": {}}))
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no 'meta' with the input and its columns" in err and "re-run scalelab fit" in err


def test_help_shows_examples_with_directories_the_readme_makes(capsys):
    for command in ("fit", "plot"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and "sweeps/demo" in text and "chinchilla" not in text


def test_headings_and_the_allocation_table_line_up(tmp_path, capsys):
    csv = write_csv(tmp_path / "iso.csv", isoflop_table(np.random.default_rng(3), np.geomspace(1e17, 1e20, 4), 5, 0.01))
    assert main(["fit", str(csv), "--bootstrap", "20", "--budget", "1e21", "--approach", "all"]) == 0
    out = capsys.readouterr().out
    for n in (1, 2, 3):
        assert f"\napproach {n}: " in out and f"approach{n}:" not in out
    table = out[out.index("compute-optimal allocation") :].splitlines()[1:6]
    assert [r.split()[0] for r in table] == ["approach", "approach", "approach", "approach", "kaplan"]
    # Every column starts at the same offset in every row.
    starts = [table[0].index(h) for h in ("N_opt", "D_opt", "loss")]
    for row in table[1:]:
        assert all(row[s - 1] == " " and row[s] != " " for s in starts), row
