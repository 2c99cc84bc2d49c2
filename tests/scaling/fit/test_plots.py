"""What the plots show and what `plot` says about the plots it cannot draw."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from scalelab.cli import main
from scalelab.scaling.fit import plots
from scalelab.scaling.fit.fit_json import FitSettings, run_fits
from scalelab.scaling.fit.table import load_table
from tests.scaling.fit.synth import isoflop_table, write_sweep

BUDGETS = np.geomspace(1e17, 1e20, 5)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """5 budgets x 3 sizes, with training curves: each size is trained at every budget."""
    rng = np.random.default_rng(1)
    table = isoflop_table(rng, BUDGETS, 3, 0.01)
    table["N"] = np.tile([3e7, 1e8, 3e8], 5)  # the same three sizes at every budget
    table["D"] = table["C"] / (6 * table["N"])
    return write_sweep(tmp_path_factory.mktemp("plots") / "sweep", table, rng, steps=20)


@pytest.fixture(scope="module")
def fitted(sweep):
    table = load_table(sweep)
    fit = run_fits(table, FitSettings(approaches=("1", "2"), bootstrap=20))
    return {"meta": {"approach": "1", "c_rtol": 0.1, "budget": None, "ci_level": 0.95}, **fit}, table


@pytest.fixture
def figures(monkeypatch):
    """Capture each figure instead of saving it."""
    drawn = {}

    def keep(fig, out, name):
        FigureCanvasAgg(fig).draw()
        drawn[name] = fig
        return []

    monkeypatch.setattr(plots, "_save", keep)
    return drawn


def _colorbar_labels(fig) -> list[str]:
    bar = fig.axes[-1]
    return [t.get_text() for t in bar.get_yticklabels() if t.get_text()]


def test_isoflop_colorbar_names_every_budget(fitted, figures, tmp_path):
    fit, table = fitted
    plots.isoflop_profiles(fit, table, tmp_path)
    assert _colorbar_labels(figures["isoflop_profiles"]) == [f"{g['C']:.3g}" for g in fit["approach2"]["groups"]]


def test_loss_curves_tell_runs_of_one_size_apart(fitted, figures, tmp_path):
    fit, table = fitted
    plots.loss_curves(fit, table, tmp_path)
    ax = figures["loss_curves"].axes[0]
    runs = [line for line in ax.get_lines() if len(line.get_xdata()) > 2 and line.get_color() != "k"][: len(table)]
    assert len(runs) == len(table) == 15
    by_colour: dict = {}
    for line in runs:
        by_colour.setdefault(tuple(np.round(line.get_color(), 6)), []).append((line.get_linestyle(), line.get_marker()))
    assert len(by_colour) == 3  # one colour per size ...
    for styles in by_colour.values():
        assert len(styles) == 5 and len(set(styles)) == 5  # ... and each of its 5 budgets looks different
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum(text.startswith("C ≈") for text in legend) == 5
    assert len(_colorbar_labels(figures["loss_curves"])) == 3  # every size named


def test_residual_labels_and_titles_do_not_overlap(fitted, figures, tmp_path):
    fit, _ = fitted
    for keep in (("approach2",), ("approach1", "approach2")):
        plots.residuals({"meta": fit["meta"], **{k: fit[k] for k in keep}}, tmp_path)
        fig = figures["residuals"]
        renderer = fig.canvas.get_renderer()
        frame = fig.bbox
        texts = [fig._suptitle, fig._supylabel]
        for ax in fig.axes:
            if ax.get_visible():
                texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        boxes = [t.get_window_extent(renderer) for t in texts if t is not None and t.get_text()]
        for box in boxes:  # nothing is cut off at the figure's edge
            assert (
                frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1
            )
        for i, a in enumerate(boxes):
            assert not any(a.overlaps(b) for b in boxes[i + 1 :])


def test_draw_all_names_each_skipped_plot_and_why(fitted, tmp_path):
    fit, table = fitted
    two_sizes = dict(fit)
    two_sizes.pop("approach2")
    two_sizes["skipped"] = {"approach2": "approach 2 needs ...; 0 of 5 qualify (5 have fewer than 3 sizes)"}
    written, skipped = plots.draw_all(two_sizes, table, tmp_path)
    assert {p.name for p in written} >= {"loss_curves.png", "optimal_allocation.png", "residuals.png"}
    assert set(skipped) == {"isoflop_profiles", "loss_contours"}
    assert skipped["isoflop_profiles"].startswith("approach 2 was not fitted (approach 2 needs")
    assert "approach 3 was not requested (--approach 1)" in skipped["loss_contours"]


def test_plot_prints_one_line_per_skipped_plot(sweep, tmp_path, capsys):
    assert main(["plot", str(sweep), "--approach", "1", "--bootstrap", "0", "--out", str(tmp_path / "fit")]) == 0
    out = capsys.readouterr().out.splitlines()
    skipped = [line for line in out if " skipped: " in line]
    assert [line.split(" skipped: ")[0] for line in skipped] == [
        "isoflop_profiles.png and .svg",
        "loss_contours.png and .svg",
    ]
    assert skipped[0] == "isoflop_profiles.png and .svg skipped: approach 2 was not requested (--approach 1)"
