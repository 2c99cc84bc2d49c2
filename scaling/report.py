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
TITLES = {
    "approach1": "approach 1: minimum-loss envelope, N_opt ∝ C^a, D_opt ∝ C^b",
    "approach2": "approach 2: isoFLOP parabolas, N_opt ∝ C^a, D_opt ∝ C^b",
}


def _g(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.4g}"


def _ci(ci: dict | None, name: str) -> str:
    iv = (ci or {}).get(name)
    return f"[{_g(iv[0])}, {_g(iv[1])}]" if iv else ""


def _block(name: str, obj: dict, level: float | None) -> list[str]:
    title = TITLES.get(name) or f"{name}: {obj.get('formula', '')}"
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
    for p in PARAMS.get(name, SINGLE):
        if p in obj:
            lines.append(f"  {p:<8} {_g(obj[p]):>11}   {_ci(obj.get('ci'), p)}")
    if obj.get("budget") is not None and obj.get("loss_pred") is not None and "N_opt" not in obj:
        lines.append(f"  loss at C = {obj['budget']:.3g}: {_g(obj['loss_pred'])} {_ci(obj.get('ci'), 'loss_pred')}")
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
        lines.append(f"compute-optimal allocation at C = {budget:.3g} FLOPs")
        lines.append(f"  {'approach':<11} {'N_opt':<30} {'D_opt':<30} loss")
        for name in (n for n in names if n in PARAMS):
            obj = fit[name]
            if not obj.get("converged"):
                lines.append(f"  {name:<11} {NOT_CONVERGED}")
                continue
            cells = [f"{_g(obj.get(k))} {_ci(obj.get('ci'), k)}" for k in ("N_opt", "D_opt", "loss_pred")]
            lines.append(f"  {name:<11} {cells[0]:<30} {cells[1]:<30} {cells[2]}")
        lines.append("")
    for name, reason in fit.get("skipped", {}).items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines).rstrip() + "\n"
