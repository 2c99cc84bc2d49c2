"""fit.json as a printed table: parameters with intervals, goodness of fit, and the allocation at a budget."""

from __future__ import annotations

import math

NOT_CONVERGED = "NOT CONVERGED"

# Public parameter names per fit.json object, in print order (derived a, b last).
PARAMS = {
    "approach1": ("a", "b"),
    "approach2": ("a", "b"),
    "approach3": ("E", "A", "B", "alpha", "beta", "a", "b"),
    "kaplan": ("N_c", "D_c", "alpha_N", "alpha_D", "a", "b"),
}
SINGLE = ("E", "A", "alpha")
# How each fit.json key is named in print: the approaches as "approach N", the laws by their key.
LABELS = {"approach1": "approach 1", "approach2": "approach 2", "approach3": "approach 3"}
TITLES = {
    "approach1": "minimum-loss envelope, N_opt ∝ C^a, D_opt ∝ C^b",
    "approach2": "isoFLOP parabolas, N_opt ∝ C^a, D_opt ∝ C^b",
}


def label(name: str) -> str:
    """A fit.json key as the table and plots name it: 'approach 3', 'kaplan', 'L_N'."""
    return LABELS.get(name, name)


def ci_text(obj: dict, name: str, fmt: str = ".4g") -> str:
    """'[low, high]' for one quantity, 'n/a (why)' when its interval is undetermined, '' when none was asked for."""
    if obj.get("degenerate"):
        return "no interval (degenerate fit)" if obj.get("ci") else ""
    iv = (obj.get("ci") or {}).get(name)
    if iv:
        return f"[{format(iv[0], fmt)}, {format(iv[1], fmt)}]"
    reason = obj.get("ci_undetermined")
    return f"n/a ({reason})" if reason and name in (obj.get("ci") or {}) else ""


def _g(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.4g}"


def _block(name: str, obj: dict, level: float | None) -> list[str]:
    title = f"{label(name)}: {TITLES.get(name) or obj.get('formula', '')}"
    if not obj.get("converged"):
        return [title, f"  {NOT_CONVERGED} ({obj.get('status', 'no usable optimum')}); no parameters are reported"]
    info = [f"{obj['n_points']} points"]
    if obj.get("r2") is not None:
        info.append(f"R² {obj['r2']:.4f} (log space)")
    if "residuals" in obj:
        info.append(f"log-residual RMS {obj['residuals']['rmse']:.3g}")
    if "starts" in obj:
        info.append(f"{obj['starts_at_best']}/{obj['starts']} starts reached the best optimum")
    lines = [title, "  " + " · ".join(info)]
    if obj.get("degenerate"):
        lines.append(f"  DEGENERATE: {obj['degenerate']}; its numbers describe no trend and carry no interval")
    for p in PARAMS.get(name, SINGLE):
        if p in obj:
            lines.append(f"  {p:<8} {_g(obj[p]):>11}   {ci_text(obj, p)}".rstrip())
    if obj.get("budget") is not None and obj.get("loss_pred") is not None and "N_opt" not in obj:
        lines.append(f"  loss at C = {obj['budget']:.3g}: {_g(obj['loss_pred'])} {ci_text(obj, 'loss_pred')}".rstrip())
    return lines


def format_report(fit: dict) -> str:
    """The printed summary of a fit.json object."""
    meta = fit["meta"]
    level = meta.get("ci_level")
    boot = f"{meta['bootstrap']} bootstrap resamples, {level:.0%} intervals" if meta["bootstrap"] else "no bootstrap"
    lines = [
        f"fit of {meta['input']}: {meta['rows']} rows, loss column {meta['columns']['loss']}, "
        f"C = {meta['flops_per_param_token']:.3g}·N·D; {boot}",
        "",
    ]
    names = [k for k in fit if k not in ("meta", "skipped")]
    for name in names:
        lines += [*_block(name, fit[name], level), ""]
    budget = meta.get("budget")
    if budget is not None:
        lines += [f"compute-optimal allocation at C = {budget:.3g} FLOPs", *_allocation_rows(fit, names), ""]
    for name, reason in fit.get("skipped", {}).items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines).rstrip() + "\n"


def _allocation_rows(fit: dict, names: list[str]) -> list[str]:
    """The allocation table at the budget, each column as wide as its widest cell."""
    rows = [["approach", "N_opt", "D_opt", "loss"]]
    for name in (n for n in names if n in PARAMS):
        obj = fit[name]
        if not obj.get("converged"):
            rows.append([label(name), NOT_CONVERGED, "", ""])
            continue
        rows.append(
            [label(name), *(f"{_g(obj.get(k))} {ci_text(obj, k)}".strip() for k in ("N_opt", "D_opt", "loss_pred"))]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
