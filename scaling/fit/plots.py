"""The fit plots, as PNG and SVG, drawn from a fit.json object and its table.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
Each plot says in its title and labels what it shows, so it can be read without the terminal output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from scalelab.scaling.fit.report import ci_text, label
from scalelab.scaling.fit.table import FitTable, group_by_c

COLORS = {"approach1": "tab:blue", "approach2": "tab:orange", "approach3": "tab:green", "kaplan": "tab:purple"}
# Budget groups in the loss-curve plot: each gets a line style and an end marker (cycled if there are more).
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
# A colour bar names every value it encodes up to this many; beyond, matplotlib's own ticks.
MAX_TICKS = 12


def _save(fig: Figure, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=130)
    # The layout is in inches and points, so the PNG's holds for the SVG; laying out again (text
    # extents of every tick label) was half of `scalelab plot`'s time.
    fig.set_layout_engine("none")
    fig.savefig(paths[1])
    return paths


def _ok(fit: dict, name: str) -> dict | None:
    obj = fit.get(name)
    return obj if obj and obj.get("converged") else None


def why_not(fit: dict, name: str) -> str:
    """Why fit.json has no usable object for `name`, in words for a 'skipped' line."""
    obj = fit.get(name)
    if obj is None:
        skipped = fit.get("skipped", {})
        if name in skipped:
            return f"{label(name)} was not fitted ({skipped[name]})"
        return f"{label(name)} was not requested (--approach {fit.get('meta', {}).get('approach', '?')})"
    return f"{label(name)} did not converge ({obj.get('status', 'no usable optimum')})"


def _ci_text(obj: dict, key: str) -> str:
    if obj.get("degenerate"):
        return f"{obj[key]:.3f} (degenerate fit: no interval)"
    return f"{obj[key]:.3f} {ci_text(obj, key, '.3f')}".rstrip()


def _label_every(bar: object, values: list[float]) -> None:
    """Tick a colour bar at each value it encodes (log scales otherwise label only the powers of 10)."""
    values = sorted(set(values))
    if len(values) <= MAX_TICKS:
        bar.ax.yaxis.set_minor_locator(NullLocator())
        bar.set_ticks(values, labels=[f"{v:.3g}" for v in values])


def loss_curves(fit: dict, table: FitTable, out: Path) -> list[Path]:
    """Training loss against FLOPs, one line per run: colour by N, line style and end marker by budget."""
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    norm = LogNorm(table.N.min(), table.N.max() * (1 + 1e-9))
    cmap = colormaps["viridis"]
    # Runs of one size share a colour, so the budget (isoFLOP group of the run's final C) sets the style.
    c_rtol = fit.get("meta", {}).get("c_rtol", 0.1)
    ends = np.array([c.C[-1] for c in table.curves]) if table.curves else table.C
    groups = group_by_c(ends, c_rtol)
    budget_of = {int(i): j for j, g in enumerate(groups) for i in g}
    for i in range(len(ends)):
        j = budget_of[i]
        style = {"color": cmap(norm(table.curves[i].N if table.curves else table.N[i])), "mec": "k", "mew": 0.5}
        style |= {"ls": LINESTYLES[j % len(LINESTYLES)], "marker": MARKERS[j % len(MARKERS)]}
        if table.curves:
            c = table.curves[i]
            ax.plot(c.C, c.loss, lw=1, alpha=0.85, markevery=[len(c.C) - 1], ms=6, **style)
        else:
            ax.plot(table.C[i], table.loss[i], ms=6, **style)
    what = "training curves" if table.curves else "final points (no training curves found)"
    shown = range(len(groups) if len(groups) <= MAX_TICKS else 0)  # too many budgets: a legend would hide the plot
    handles = [
        Line2D([], [], color="0.3", ls=LINESTYLES[j % len(LINESTYLES)], marker=MARKERS[j % len(MARKERS)], mec="k")
        for j in shown
    ]
    names = [f"C ≈ {np.exp(np.mean(np.log(ends[groups[j]]))):.3g} ({len(groups[j])} runs)" for j in shown]
    env = _ok(fit, "approach1")
    if env:
        e = env["envelope"]
        (line,) = ax.plot(e["C"], e["loss"], "k.-", ms=4, lw=1.5)
        handles.append(line)
        names.append("approach 1 envelope (lowest loss at each C)")
    ax.legend(handles, names, loc="upper right", fontsize=8, title="budget (line style, end marker)", title_fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="loss")
    ax.set_title(f"Loss against compute: {what}; colour: model size, style: budget")
    bar = fig.colorbar(_mappable(norm, cmap), ax=ax, label="parameters N")
    _label_every(bar, [float(n) for n in table.N])
    return _save(fig, out, "loss_curves")


def _mappable(norm: LogNorm, cmap: Colormap) -> ScalarMappable:
    return ScalarMappable(norm=norm, cmap=cmap)


def isoflop_profiles(fit: dict, table: FitTable, out: Path) -> list[Path] | str:
    """Loss against N for each isoFLOP group, with its fitted parabola and minimum (or why it is not drawn)."""
    a2 = _ok(fit, "approach2")
    if not a2:
        return why_not(fit, "approach2")
    index = {row: i for i, row in enumerate(table.labels)}
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    groups = a2["groups"]
    norm = LogNorm(min(g["C"] for g in groups), max(g["C"] for g in groups) * (1 + 1e-9))
    cmap = colormaps["plasma"]
    for g in groups:
        rows = [index[r] for r in g["rows"] if r in index]
        color = cmap(norm(g["C"])) if g["usable"] else "0.6"
        ax.scatter(table.N[rows], table.loss[rows], color=color, s=22, zorder=3)
        if g["coef"] is not None:
            logn = np.log(table.N[rows])
            u = np.linspace(logn.min() - 0.3, logn.max() + 0.3, 100) - g["center"]
            c0, c1, c2 = g["coef"]
            ax.plot(
                np.exp(u + g["center"]), c0 + c1 * u + c2 * u * u, color=color, lw=1.2, ls="-" if g["usable"] else ":"
            )
        if g["usable"]:
            ax.plot(g["N_opt"], g["loss_min"], marker="*", color=color, ms=13, mec="k", zorder=4)
    ax.plot([], [], "k*", ms=10, label="parabola minimum (N_opt)")
    if any(not g["usable"] for g in groups):
        ax.scatter([], [], color="0.6", label="left out (too few sizes or opens downward)")
    ax.legend(loc="upper right")
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss")
    ax.set_title(f"IsoFLOP profiles: a parabola in log N per budget (a = {_ci_text(a2, 'a')})")
    bar = fig.colorbar(_mappable(norm, cmap), ax=ax, label="budget C (FLOPs)")
    _label_every(bar, [g["C"] for g in groups])
    return _save(fig, out, "isoflop_profiles")


def optimal_allocation(fit: dict, out: Path) -> list[Path] | str:
    """N_opt(C) and D_opt(C) per approach, with bootstrap bands and the extrapolated range shaded."""
    present = [n for n in COLORS if _ok(fit, n) and "frontier" in fit[n]]
    if not present:
        return "no approach with an N/D trade-off was fitted: " + "; ".join(why_not(fit, n) for n in COLORS)
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    budget = fit["meta"].get("budget")
    for ax, key, exp in zip(axes, ("N_opt", "D_opt"), ("a", "b"), strict=True):
        for name in present:
            obj = fit[name]
            fr = obj["frontier"]
            c = np.array(fr["C"])
            y = np.array(fr[key], dtype=float)
            ax.plot(c, y, color=COLORS[name], label=f"{label(name)}: {exp} = {_ci_text(obj, exp)}")
            band = fr.get(f"{key}_ci")
            if band:
                lo, hi = (np.array(b, dtype=float) for b in band)
                ax.fill_between(c, lo, hi, color=COLORS[name], alpha=0.2, lw=0)
            pts = obj.get("envelope") or obj.get("minima")
            if pts:
                ax.scatter(pts["C"], pts[key], color=COLORS[name], s=14, zorder=3)
        hi_c = fit[present[0]]["frontier"]["data_range"][1]
        ax.axvspan(
            hi_c, fit[present[0]]["frontier"]["C"][-1], color="0.9", zorder=0, label="extrapolation (beyond the data)"
        )
        if budget:
            ax.axvline(budget, color="k", ls="--", lw=1, label=f"budget C = {budget:.3g}")
        ax.set(xscale="log", yscale="log", xlabel="training FLOPs C")
        ax.set_ylabel({"N_opt": "compute-optimal parameters N_opt", "D_opt": "compute-optimal tokens D_opt"}[key])
        ax.legend(fontsize=8, loc="upper left")
    level = fit["meta"].get("ci_level", 0.95)
    fig.suptitle(f"Compute-optimal allocation; shaded bands: {level:.0%} bootstrap intervals")
    return _save(fig, out, "optimal_allocation")


def loss_contours(fit: dict, table: FitTable, out: Path) -> list[Path] | str:
    """L(N, D) contours of approach 3 (or Kaplan), isoFLOP lines, the compute-optimal frontier and the runs."""
    name = next((n for n in ("approach3", "kaplan") if _ok(fit, n)), None)
    if name is None:
        return "it needs a law in N and D: " + "; ".join(why_not(fit, n) for n in ("approach3", "kaplan"))
    obj = fit[name]
    k = fit["meta"]["flops_per_param_token"]
    n = np.geomspace(table.N.min() / 3, table.N.max() * 3, 120)
    d = np.geomspace(table.D.min() / 3, table.D.max() * 3, 120)
    nn, dd = np.meshgrid(n, d)
    if name == "approach3":
        loss = obj["E"] + obj["A"] * nn ** -obj["alpha"] + obj["B"] * dd ** -obj["beta"]
    else:
        loss = ((obj["N_c"] / nn) ** (obj["alpha_N"] / obj["alpha_D"]) + obj["D_c"] / dd) ** obj["alpha_D"]
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax = fig.add_subplot()
    levels = np.geomspace(loss.min(), np.percentile(loss, 98), 14)
    filled = ax.contourf(nn, dd, loss, levels=levels, cmap="viridis_r", norm=LogNorm(), extend="max")
    fig.colorbar(filled, ax=ax, label=f"predicted loss ({label(name)})", ticks=levels[::2], format="%.3g")
    for c in np.geomspace(k * n[0] * d[0], k * n[-1] * d[-1], 9)[1:-1]:
        ax.plot(n, c / (k * n), color="w", ls=":", lw=0.8)
    fr = obj["frontier"]
    ax.plot(fr["N_opt"], fr["D_opt"], color="r", lw=2, label="compute-optimal frontier")
    ax.scatter(table.N, table.D, c="k", s=12, label="runs")
    ax.plot([], [], color="w", ls=":", label="isoFLOP lines")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(n[0], n[-1]),
        ylim=(d[0], d[-1]),
        xlabel="parameters N",
        ylabel="training tokens D",
    )
    ax.legend(loc="upper left", facecolor="0.8")
    ax.set_title(f"L(N, D) from {label(name)}: {obj['formula']}")
    return _save(fig, out, "loss_contours")


def residuals(fit: dict, out: Path) -> list[Path] | str:
    """Log-space residuals of every converged fit against the variable they were fitted over."""
    names = [n for n in fit if n not in ("meta", "skipped") and _ok(fit, n) and "residuals" in fit[n]]
    if not names:
        return "no fit converged"
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    # At least 6.5 in wide: the two-line title must fit above a single panel too.
    fig = Figure(figsize=(max(4.5 * cols, 6.5), 3.6 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):
        r = fit[name]["residuals"]
        ax.scatter(r["x_values"], r["values"], s=10, color=COLORS.get(name, "tab:gray"))
        ax.axhline(0, color="k", lw=0.8)
        ax.axhspan(-r["rmse"], r["rmse"], color="0.85", zorder=0)
        # One shared y label (below) instead of one per panel: a long label beside each panel ran into
        # the neighbouring panel's title.
        ax.set(xscale="log", xlabel=r["x"])
        r2 = fit[name].get("r2")
        title = f"{label(name)}: R² {r2:.4f}, RMS {r['rmse']:.3g}" if r2 is not None else label(name)
        ax.set_title(title + (" (degenerate)" if fit[name].get("degenerate") else ""), fontsize=10)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.supylabel("log residual (observed - fit)", fontsize=10)
    fig.suptitle("Residuals in log space (grey band: ± RMS)\napproaches 1 and 2: residuals of log N_opt", fontsize=11)
    return _save(fig, out, "residuals")


def draw_all(fit: dict, table: FitTable, out: Path) -> tuple[list[Path], dict[str, str]]:
    """Every plot the fit supports: (the files written, {plot name: why it was not drawn})."""
    out.mkdir(parents=True, exist_ok=True)
    written = loss_curves(fit, table, out)
    skipped: dict[str, str] = {}
    for name, result in (
        ("isoflop_profiles", isoflop_profiles(fit, table, out)),
        ("optimal_allocation", optimal_allocation(fit, out)),
        ("loss_contours", loss_contours(fit, table, out)),
        ("residuals", residuals(fit, out)),
    ):
        if isinstance(result, str):
            skipped[name] = result
        else:
            written += result
    return written, skipped
