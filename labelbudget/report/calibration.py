"""Calibration of the measurement: the topline against the never-trained control, per-budget verdicts of every
pair the report compares, and the share of the control-to-topline gap each SSL upstream closes.

A topline (params `toplines`) is the same encoder trained the same way on true phone targets. If it does not
beat the control downstream, the downstream cannot see a better representation and a failed F0 says nothing
about the pretraining. On the gap scale, 0% is the never-trained encoder and 100% the topline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from labelbudget import metrics as M
from labelbudget.report.aggregate import ReportConfig
from labelbudget.report.findings import judge
from labelbudget.runs import budget_name

SENSITIVE_SHARE = 0.75  # the topline must beat the control at >= this share of the budgets (3 of 4)


def share_of_gap(value: float, floor: float, top: float) -> float | None:
    """Where `value` lies from `floor` (0.0) to `top` (1.0), whichever way is better; None without a gap."""
    gap = top - floor
    if not (math.isfinite(gap) and abs(gap) > 1e-12 and math.isfinite(value)):
        return None
    return (value - floor) / gap


def pairs(cfg: ReportConfig, table: Mapping) -> dict[str, tuple[str, str]]:
    """name -> (better candidate, reference): each topline and SSL size against the control, larger vs smaller."""
    out = {}
    if cfg.control in table:
        for u in [*cfg.toplines, *cfg.ssl_sizes]:
            if u in table:
                out[f"{u}-vs-{cfg.control}"] = (u, cfg.control)
    if cfg.larger in table and cfg.smaller in table:
        out[f"{cfg.larger}-vs-{cfg.smaller}"] = (cfg.larger, cfg.smaller)
    return out


def comparisons(reps: Mapping[tuple[str, str], dict[str, np.ndarray]], cfg: ReportConfig, table: Mapping,
                metric: str, health: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """pair -> {"verdicts": budget -> holds | does not hold | inconclusive | invalid, "intervals": budget ->
    [lo, hi] of candidate minus reference (the paired bootstrap of the findings), "problems"}."""
    health = health or {}
    out = {}
    for name, (a, b) in pairs(cfg, table).items():
        problems = [f"`{u}`: {p}" for u in (a, b) for p in health.get(u, {}).get("problems", [])]
        verdicts, intervals = {}, {}
        for budget in (budget_name(x) for x in cfg.budgets_min):
            verdict, ivs = judge({budget: reps[(a, budget)][metric] - reps[(b, budget)][metric]}, cfg.ci)
            verdicts[budget] = "invalid" if problems else verdict
            intervals[budget] = ivs[budget]
        out[name] = {"verdicts": verdicts, "intervals": intervals, "problems": problems}
    return out


def sensitivity(comps: Mapping[str, dict], cfg: ReportConfig) -> dict | None:
    """The calibration verdict: the measurement can see a better representation when the topline beats the
    control at >= 75% of the budgets (None without a topline and a control)."""
    if not cfg.toplines or f"{cfg.toplines[0]}-vs-{cfg.control}" not in comps:
        return None
    top = cfg.toplines[0]
    verdicts = comps[f"{top}-vs-{cfg.control}"]["verdicts"]
    n = len(verdicts)
    need = math.ceil(SENSITIVE_SHARE * n)
    held = sum(v == "holds" for v in verdicts.values())
    if "invalid" in verdicts.values():
        verdict = "invalid"
    elif held >= need:
        verdict = "holds"
    elif sum(v == "does not hold" for v in verdicts.values()) > n - need:
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    return {"claim": f"the measurement can see a better representation: the topline `{top}` beats `{cfg.control}` "
                     f"at >= {need} of {n} budgets", "verdict": verdict, "topline": top,
            "detail": f"holds at {held}/{n} budgets"}


def error_gap_shares(table: Mapping, reps: Mapping[tuple[str, str], dict[str, np.ndarray]], cfg: ReportConfig,
                     metric: str) -> dict[str, dict[str, dict]]:
    """SSL size -> budget -> {share, interval}: the share of the control-to-topline error gap it closes."""
    if not cfg.toplines or cfg.control not in table or cfg.toplines[0] not in table:
        return {}
    top, ctl = cfg.toplines[0], cfg.control
    out: dict[str, dict[str, dict]] = {}
    for s in (u for u in cfg.ssl_sizes if u in table):
        for b in (budget_name(x) for x in cfg.budgets_min):
            share = share_of_gap(table[s][b]["weighted"][metric], table[ctl][b]["weighted"][metric],
                                 table[top][b]["weighted"][metric])
            with np.errstate(invalid="ignore", divide="ignore"):
                r = (reps[(s, b)][metric] - reps[(ctl, b)][metric]) / (reps[(top, b)][metric] - reps[(ctl, b)][metric])
            finite = r[np.isfinite(r)]
            iv = [round(float(x), 4) for x in M.interval(finite, cfg.ci)] if len(finite) else None
            out.setdefault(s, {})[b] = {"share": None if share is None else round(share, 4), "interval": iv}
    return out


def probe_gap_shares(probe: Mapping[str, dict], cfg: ReportConfig) -> dict[str, dict]:
    """SSL size -> {"layers": layer -> share, "best": share}: each layer's phone accuracy on the scale from the
    control's best layer (0%) to the topline's best layer (100%)."""
    if not cfg.toplines:
        return {}
    top, ctl = probe.get(cfg.toplines[0], {}), probe.get(cfg.control, {})
    if "best" not in top or "best" not in ctl:
        return {}
    out = {}
    for s in cfg.ssl_sizes:
        pr = probe.get(s, {})
        if "accuracy" not in pr:
            continue
        layers = {k: share_of_gap(v["weighted"], ctl["best"], top["best"]) for k, v in pr["accuracy"].items()}
        out[s] = {"layers": {k: None if v is None else round(v, 4) for k, v in layers.items()},
                  "best": share_of_gap(pr["best"], ctl["best"], top["best"])}
    return out
