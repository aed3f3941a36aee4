"""The findings F0-F3 judged on bootstrap intervals, and the soundness of each upstream that can make them invalid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from labelbudget import metrics as M
from labelbudget.report.aggregate import ReportConfig, Run, relative_degradation
from labelbudget.runs import budget_name


def upstream_health(runs: Sequence[Run], cfg: ReportConfig, pretraining: Mapping[str, dict] | None) -> dict:
    """Per upstream: how many finetunes converged (stopped by patience), which are degenerate, and every
    reason the upstream's numbers cannot be trusted (`problems`; empty means sound)."""
    out = {}
    for u in cfg.upstreams:
        rs = [r for r in runs if r.upstream == u]
        names = [f"{u}-{budget_name(r.budget_min)}-{r.seed}" for r in rs]
        converged = sum(1 for r in rs if r.info.get("stop_reason", "patience" if r.info.get("stopped_early")
                                                     else "max_steps") == "patience")
        degenerate = [n for n, r in zip(names, rs, strict=True) if r.info.get("degenerate")]
        problems = []
        if degenerate:
            problems.append(f"{len(degenerate)} degenerate finetune(s) (never left the all-blank phase or a "
                            f"NaN loss): {', '.join(degenerate[:4])}")
        if rs and converged < cfg.min_converged * len(rs):
            problems.append(f"only {converged}/{len(rs)} finetunes converged (the rest hit the step maximum)")
        if pretraining is not None and (u in cfg.ssl_sizes or u in cfg.toplines):
            pm = pretraining.get(u)
            if pm is None:
                problems.append("no pretraining diagnostics")
            elif not all(math.isfinite(float(pm.get(k, math.nan))) for k in ("train/loss", "train/masked_acc")):
                problems.append(f"pretraining ended non-finite (loss {pm.get('train/loss')})")
        out[u] = {"runs": len(rs), "converged": converged, "degenerate": degenerate, "problems": problems}
    return out


def judge(diffs: Mapping[str, np.ndarray], ci: float) -> tuple[str, dict[str, list[float]]]:
    """Verdict on a claim that every difference is negative, from their bootstrap replicates."""
    raw = {k: M.interval(d, ci) for k, d in diffs.items()}
    ivs = {k: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in raw.items()}  # rounded for the report only
    if all(hi < 0 for _, hi in raw.values()):
        return "holds", ivs
    if any(lo > 0 for lo, _ in raw.values()):
        return "does not hold", ivs
    return "inconclusive", ivs


def findings(table: Mapping[str, Mapping[str, dict]], reps: Mapping[tuple[str, str], dict[str, np.ndarray]],
             cfg: ReportConfig, metric: str, health: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """F0-F3 judged on paired bootstrap intervals of the judged weighted metric (see the module docstring)."""
    j = _Judge(table, reps, cfg, metric, health or {})
    return {"F0": j.f0(), **j.f1_f2(), "F3": j.f3()}


def _deg(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x - ref) / ref


def _skipped(claim: str, detail: str) -> dict:
    return {"claim": claim, "verdict": "not evaluated", "detail": detail}


class _Judge:
    """The findings of one report: means from `table`, paired bootstrap replicates from `reps`."""

    def __init__(self, table: Mapping, reps: Mapping, cfg: ReportConfig, metric: str, health: Mapping[str, dict]):
        self.table, self.reps, self.cfg, self.metric, self.health = table, reps, cfg, metric, health
        self.budgets = [budget_name(b) for b in cfg.budgets_min]
        self.small_b, self.large_b = self.budgets[0], self.budgets[-1]
        self.name, self.pct = metric.upper(), f"{cfg.ci:.0%}"

    def err(self, u: str, b: str) -> float:
        return self.table[u][b]["weighted"][self.metric]

    def r(self, u: str, b: str) -> np.ndarray:
        return self.reps[(u, b)][self.metric]

    def finish(self, claim: str, involved: list[str], diffs: dict[str, np.ndarray], detail: str,
               numbers: dict) -> dict:
        verdict, ivs = judge(diffs, self.cfg.ci)
        why = {u: self.health[u]["problems"] for u in involved if self.health.get(u, {}).get("problems")}
        if why:
            verdict = "invalid"
            detail = "; ".join(f"`{u}`: {', '.join(p)}" for u, p in why.items()) + f" (numbers: {detail})"
        return {"claim": claim, "verdict": verdict, "numbers": numbers,
                "intervals": ivs, "detail": detail, "involves": involved}

    def f0(self) -> dict:
        cfg, budgets = self.cfg, self.budgets
        ssl = [s for s in cfg.ssl_sizes if s in self.table]
        claim = f"every SSL size beats the `{cfg.control}` control at every budget"
        if cfg.control not in self.table or not ssl:
            return _skipped(claim, f"`{cfg.control}` or the SSL sizes are not among the upstreams")
        diffs = {f"{s}@{b}": self.r(s, b) - self.r(cfg.control, b) for s in ssl for b in budgets}
        wins = sum(self.err(s, b) < self.err(cfg.control, b) for s in ssl for b in budgets)
        numbers = {b: {u: round(self.err(u, b), 4) for u in [*ssl, cfg.control]} for b in budgets}
        return self.finish(claim, [*ssl, cfg.control], diffs,
                           f"{wins}/{len(diffs)} (size, budget) pairs beat the control on the means", numbers)

    def f1_f2(self) -> dict[str, dict]:
        s, big, budgets = self.cfg.smaller, self.cfg.larger, self.budgets
        if s not in self.table or big not in self.table:
            return {f: _skipped(f"{big} vs {s}", f"`{s}`/`{big}` missing") for f in ("F1", "F2")}
        err, r, small_b, large_b = self.err, self.r, self.small_b, self.large_b
        numbers = {b: {big: round(err(big, b), 4), s: round(err(s, b), 4)} for b in budgets}
        wins = sum(err(big, b) < err(s, b) for b in budgets)
        out = {"F1": self.finish(f"`{big}` has a lower weighted {self.name} than `{s}` at every budget", [s, big],
                                 {b: r(big, b) - r(s, b) for b in budgets},
                                 f"better on the means at {wins}/{len(budgets)} budgets", numbers)}
        claim = f"from {large_b} to {small_b} min, `{big}` degrades less than `{s}` (relative)"
        dl, dsm = (relative_degradation(err(u, small_b), err(u, large_b)) for u in (big, s))
        if dl is None or dsm is None:
            out["F2"] = _skipped(claim, "undefined: zero error at the largest budget")
            return out
        diff = _deg(r(big, small_b), r(big, large_b)) - _deg(r(s, small_b), r(s, large_b))
        lo, hi = M.interval(diff, self.cfg.ci)
        out["F2"] = self.finish(claim, [s, big], {"degradation difference": diff},
                                f"{big} {dl:+.1%} vs {s} {dsm:+.1%}; difference {dl - dsm:+.1%} "
                                f"[{self.pct} interval {lo:+.1%}, {hi:+.1%}]",
                                {big: round(dl, 4), s: round(dsm, 4)})
        return out

    def f3(self) -> dict:
        cfg, big, small_b = self.cfg, self.cfg.larger, self.small_b
        if big not in self.table or cfg.baseline not in self.table:
            return _skipped(f"{big} vs {cfg.baseline}", f"`{big}` or `{cfg.baseline}` missing")
        fb, lg = self.err(cfg.baseline, small_b), self.err(big, small_b)
        gain = (fb - lg) / fb if fb > 0 else 0.0
        rf = self.r(cfg.baseline, small_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            gains = (rf - self.r(big, small_b)) / rf
        lo, hi = M.interval(gains, cfg.ci)
        return self.finish(f"at {small_b} min, `{big}` beats `{cfg.baseline}` by >= {cfg.f3_margin:.0%} "
                           "relative", [big, cfg.baseline], {"margin - gain": cfg.f3_margin - gains},
                           f"{big} {lg:.3f} vs {cfg.baseline} {fb:.3f}: {gain:+.1%} relative "
                           f"[{self.pct} interval {lo:+.1%}, {hi:+.1%}]",
                           {big: round(lg, 4), cfg.baseline: round(fb, 4), "relative_gain": round(gain, 4)})
