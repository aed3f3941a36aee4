"""The sample-efficiency report: error rate against labeled hours, per upstream, and the findings it checks.

Every number is recomputed from the per-utterance files of the `evaluate` stage (results/eval/*/hyps.jsonl).

- Aggregation: upstream x budget -> per test set and weighted WER/CER, mean and sample std over seeds.
- Uncertainty: a paired bootstrap over test utterances (test sets as strata) and subset seeds. Every
  replicate draws one utterance resample and one seed resample shared by all upstreams and budgets (every
  model is scored on the same utterances, and seed s is the same labeled subset for every upstream), so a
  difference between two upstreams has an interval of its own. Band: the 95% interval of a seed-mean error.
- Relative degradation of budget b: (E_b - E_largest) / E_largest, per upstream, on the seed means.
- Judged metric: WER when every upstream's weighted WER at the largest budget is below `wer_threshold` (0.5),
  else CER (WER saturates near 1.0 long before CER does).
- Findings: F0 every SSL size beats the random control at every budget; F1 the larger SSL model beats the
  smaller at every budget; F2 the larger model degrades less from the largest to the smallest budget; F3 at
  the smallest budget the larger model beats fbank by at least `f3_margin` relative.
- Verdicts: "holds" only when the 95% interval of every difference the claim makes lies on its side (for F2
  the interval of the difference of the two degradations); "does not hold" when one lies entirely on the
  other side; "inconclusive" otherwise. "invalid" (whatever the numbers say) when an upstream the finding
  involves is unsound: a degenerate run (never left the all-blank phase, or a NaN loss), fewer than
  `min_converged` of its runs stopped by patience rather than by the step maximum, or (SSL sizes) pretraining
  diagnostics missing or non-finite.
- Label hours the larger model needs to match the smaller one at the largest budget: log-linear interpolation
  of the larger model's error curve between budgets (no extrapolation beyond them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelbudget import metrics as M
from labelbudget.io import read_json, read_jsonl
from labelbudget.runs import budget_name

METRICS = ("wer", "cer")
COUNT_KEYS = ("word_errors", "words", "char_errors", "chars")


class ReportError(ValueError):
    pass


@dataclass
class ReportConfig:
    upstreams: list[str]
    ssl_sizes: list[str]
    budgets_min: list[float]  # as spelled in params (2, 2.5, 6000000): they name stages and files
    seeds: list[int]
    smaller: str = "small"
    larger: str = "large"
    baseline: str = "fbank"
    control: str = "random"
    wer_threshold: float = 0.5
    f3_margin: float = 0.25
    min_converged: float = 0.9  # share of an upstream's finetunes that must stop by patience
    weights: Any = M.WORD_COUNT_WEIGHTS
    bootstrap: int = 1000
    ci: float = 0.95
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict) -> ReportConfig:
        r = dict(params.get("report", {}))
        e = params.get("evaluate", {})
        cfg = cls(upstreams=list(params["upstreams"]), ssl_sizes=list(params["ssl_sizes"]),
                  budgets_min=sorted(params["subsets"]["budgets_min"], key=float),
                  seeds=list(params["subsets"]["seeds"]), weights=e.get("weights", M.WORD_COUNT_WEIGHTS),
                  bootstrap=int(e.get("bootstrap", 1000)), ci=float(e.get("ci", 0.95)),
                  seed=int(e.get("bootstrap_seed", 0)), **r)
        for role in ("smaller", "larger"):
            if getattr(cfg, role) not in cfg.ssl_sizes:
                raise ReportError(f"params report.{role}: {getattr(cfg, role)!r} is not in ssl_sizes "
                                  f"{cfg.ssl_sizes}")
        return cfg


@dataclass
class Run:
    upstream: str
    budget_min: float
    seed: int
    rows: list[dict]
    info: dict = field(default_factory=dict)


def index_runs(eval_dir: Path) -> dict[tuple[str, float, int], Path]:
    """Every evaluation under `eval_dir` by the identity its metrics.json states (upstream, budget, seed),
    whatever its folder is called."""
    found: dict[tuple[str, float, int], Path] = {}
    for f in sorted(Path(eval_dir).glob("*/metrics.json")):
        m = read_json(f)
        try:
            key = (str(m["upstream"]), float(m["budget_minutes"]), int(m["seed"]))
        except (KeyError, TypeError, ValueError):
            raise ReportError(f"{f}: does not name its run (upstream, budget_minutes, seed); re-run its "
                              "`evaluate` stage") from None
        if key in found:
            raise ReportError(f"{f} and {found[key] / 'metrics.json'} both claim run {key}")
        found[key] = f.parent
    return found


def load_runs(eval_dir: str | Path, cfg: ReportConfig) -> list[Run]:
    """Per-utterance results of every (upstream, budget, seed) in params; names every missing run."""
    runs, missing = [], []
    found = index_runs(Path(eval_dir))
    for u in cfg.upstreams:
        for b in cfg.budgets_min:
            for s in cfg.seeds:
                d = found.get((u, float(b), int(s)))
                if d is None or not (d / "hyps.jsonl").exists():
                    missing.append(f"{u}-{budget_name(b)}-{s}")
                    continue
                rows = sorted(read_jsonl(d / "hyps.jsonl"), key=lambda r: (r["test_set"], r["id"]))
                runs.append(Run(u, b, s, rows, read_json(d / "metrics.json")))
    if missing:
        raise ReportError(f"{len(missing)} evaluation result(s) missing under {eval_dir}: {missing[:8]}"
                          f"{' ...' if len(missing) > 8 else ''}; run the `evaluate` stages first")
    return runs


def _per_test_arrays(rows: Sequence[dict]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, list]] = {}
    for r in rows:
        d = out.setdefault(r["test_set"], {k: [] for k in ("ids", *COUNT_KEYS)})
        d["ids"].append(r["id"])
        for k in COUNT_KEYS:
            d[k].append(r[k])
    return {t: {k: np.asarray(v) for k, v in d.items()} for t, d in out.items()}


def run_scores(rows: Sequence[dict], weights_spec: Any) -> dict:
    """Per test set WER/CER and weighted WER/CER of one run (no intervals)."""
    arrays = _per_test_arrays(rows)
    tests = {}
    for t, a in arrays.items():
        c = M.Counts(int(a["word_errors"].sum()), int(a["words"].sum()), int(a["char_errors"].sum()),
                     int(a["chars"].sum()))
        tests[t] = {**M.rates(c, t), "words": c.words}
    weights = M.resolve_weights(weights_spec, {t: v["words"] for t, v in tests.items()})
    weighted = {m: M.weighted({t: v[m] for t, v in tests.items()}, weights) for m in METRICS}
    return {"tests": tests, "weighted": weighted, "weights": weights}


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(runs: Sequence[Run], cfg: ReportConfig) -> dict:
    """upstream -> budget -> seed means/stds per test set and weighted, and the bootstrap band of the mean."""
    groups: dict[tuple[str, float], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.upstream, r.budget_min), []).append(r)
    test_sets = sorted({row["test_set"] for r in runs for row in r.rows})
    table: dict[str, dict[str, dict]] = {}
    per_run: dict[str, dict[str, dict]] = {}
    weights_used = None
    for (u, b), rs in groups.items():
        scores = [run_scores(r.rows, cfg.weights) for r in rs]
        for r, s in zip(rs, scores, strict=True):
            if set(s["tests"]) != set(test_sets):
                raise ReportError(f"{u}-{budget_name(b)}-{r.seed}: test sets {sorted(s['tests'])} differ "
                                  f"from the other runs' {test_sets}")
            per_run.setdefault(u, {}).setdefault(budget_name(b), {})[str(r.seed)] = {
                "tests": {t: {m: v[m] for m in METRICS} for t, v in s["tests"].items()},
                "weighted": s["weighted"],
                **{k: r.info.get(k) for k in ("stop_reason", "steps", "best_step", "degenerate") if k in r.info}}
        weights_used = scores[0]["weights"]
        entry: dict[str, Any] = {"hours": b / 60, "seeds": len(rs), "tests": {}, "weighted": {}}
        for t in test_sets:
            entry["tests"][t] = {}
            for m in METRICS:
                vals = [s["tests"][t][m] for s in scores]
                entry["tests"][t][m] = float(np.mean(vals))
                entry["tests"][t][f"{m}_std"] = _std(vals)
        for m in METRICS:
            vals = [s["weighted"][m] for s in scores]
            entry["weighted"][m] = float(np.mean(vals))
            entry["weighted"][f"{m}_std"] = _std(vals)
            entry["weighted"][f"{m}_min"], entry["weighted"][f"{m}_max"] = float(min(vals)), float(max(vals))
        entry["training"] = _training_summary(rs)
        table.setdefault(u, {})[budget_name(b)] = entry
    reps = bootstrap_replicates(runs, weights_used, cfg)
    for (u, b), r in reps.items():
        for m in METRICS:
            table[u][b]["weighted"][f"{m}_ci"] = list(M.interval(r[m], cfg.ci))
    for by_budget in table.values():
        largest = by_budget[budget_name(max(cfg.budgets_min))]["weighted"]
        for entry in by_budget.values():
            for m in METRICS:
                entry["weighted"][f"{m}_rel_degradation"] = relative_degradation(entry["weighted"][m],
                                                                                 largest[m])
    return {"table": table, "runs": per_run, "test_sets": test_sets, "weights": weights_used, "replicates": reps}


def bootstrap_replicates(runs: Sequence[Run], weights: Mapping[str, float], cfg: ReportConfig
                         ) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """(upstream, budget) -> metric -> `cfg.bootstrap` replicates of the seed-mean weighted rate, from one
    shared resample of utterances (per test set) and of seeds per replicate: comparisons are paired."""
    rng = np.random.default_rng(cfg.seed)
    arrays = {(r.upstream, budget_name(r.budget_min), r.seed): _per_test_arrays(r.rows) for r in runs}
    ref = next(iter(arrays.values()))
    idx = {}
    for t in weights:
        ids = ref[t]["ids"]
        bad = [k for k, a in arrays.items() if not np.array_equal(a[t]["ids"], ids)]
        if bad:
            raise ReportError(f"test set {t!r}: runs were scored on different utterances (e.g. "
                              f"{'-'.join(map(str, bad[0]))})")
        idx[t] = M.resample_indices(len(ids), cfg.bootstrap, rng)
    seeds = sorted({r.seed for r in runs})
    draws = rng.integers(0, len(seeds), size=(cfg.bootstrap, len(seeds)))
    seed_weight = np.stack([(draws == k).sum(1) for k in range(len(seeds))], axis=1) / len(seeds)
    per_run = {}
    for key, a in arrays.items():
        per_run[key] = {m: sum(weights[t] * M.bootstrap_rates(a[t][e], a[t][n], idx[t]) for t in weights)
                        for m, e, n in (("wer", "word_errors", "words"), ("cer", "char_errors", "chars"))}
    out: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for u, b in {(k[0], k[1]) for k in per_run}:
        have = [k for k, s in enumerate(seeds) if (u, b, s) in per_run]
        w = seed_weight[:, have]
        w = w / np.where(w.sum(1, keepdims=True) > 0, w.sum(1, keepdims=True), 1)
        out[(u, b)] = {m: (w * np.stack([per_run[(u, b, seeds[k])][m] for k in have], axis=1)).sum(1)
                       for m in METRICS}
    return out


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
        if pretraining is not None and u in cfg.ssl_sizes:
            pm = pretraining.get(u)
            if pm is None:
                problems.append("no pretraining diagnostics")
            elif not all(math.isfinite(float(pm.get(k, math.nan))) for k in ("train/loss", "train/masked_acc")):
                problems.append(f"pretraining ended non-finite (loss {pm.get('train/loss')})")
        out[u] = {"runs": len(rs), "converged": converged, "degenerate": degenerate, "problems": problems}
    return out


def _training_summary(rs: Sequence[Run]) -> dict:
    infos = [r.info for r in rs]
    out: dict[str, Any] = {}
    for k in ("steps", "best_dev_cer"):
        vals = [i[k] for i in infos if i.get(k) is not None]
        if vals:
            out[k] = float(np.mean(vals))
    lw = [i["layer_weights"] for i in infos if i.get("layer_weights")]
    if lw and all(len(w) == len(lw[0]) for w in lw):
        out["layer_weights"] = np.mean(lw, axis=0).round(4).tolist()
    stopped = [i["stopped_early"] for i in infos if "stopped_early" in i]
    if stopped:
        out["stopped_early"] = int(sum(stopped))
        out["stopped_at_max"] = len(stopped) - int(sum(stopped))
    out["degenerate"] = sum(1 for i in infos if i.get("degenerate"))
    return out


def relative_degradation(error: float, reference: float) -> float | None:
    """(E - E_ref) / E_ref: 0.10 means 10% relatively worse than the reference (None when E_ref is 0)."""
    return (error - reference) / reference if reference > 0 else None


def judged_metric(table: Mapping[str, Mapping[str, dict]], largest: str, threshold: float) -> tuple[str, str]:
    """('wer' or 'cer', why)."""
    at_largest = {u: t[largest]["weighted"]["wer"] for u, t in table.items()}
    high = {u: round(v, 3) for u, v in at_largest.items() if v >= threshold}
    if not high:
        return "wer", f"every upstream's weighted WER at the largest budget is below {threshold}"
    return "cer", (f"weighted WER at the largest budget is >= {threshold} (saturated) for {high}, "
                   "so the findings are judged on weighted CER")


def hours_to_match(hours: Sequence[float], errors: Sequence[float], target: float) -> dict:
    """Labeled hours at which an error curve (piecewise linear in log hours) first reaches `target`."""
    pts = sorted(zip(hours, errors, strict=True))
    if pts[0][1] <= target:
        return {"hours": pts[0][0], "kind": "at_most",
                "text": f"<= {pts[0][0]:.3g} h (already at the smallest budget)"}
    for (h0, e0), (h1, e1) in zip(pts, pts[1:], strict=False):
        if e0 > target >= e1:
            frac = (e0 - target) / (e0 - e1)
            h = math.exp(math.log(h0) + frac * (math.log(h1) - math.log(h0)))
            return {"hours": h, "kind": "interpolated", "text": f"{h:.3g} h (interpolated)"}
    return {"hours": None, "kind": "not_reached", "text": "not reached within the budgets"}


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
    budgets = [budget_name(b) for b in cfg.budgets_min]
    small_b, large_b = budgets[0], budgets[-1]
    health = health or {}

    def err(u: str, b: str) -> float:
        return table[u][b]["weighted"][metric]

    def r(u: str, b: str) -> np.ndarray:
        return reps[(u, b)][metric]

    def deg(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (x - ref) / ref

    def finish(claim: str, involved: list[str], diffs: dict[str, np.ndarray], detail: str,
               numbers: dict) -> dict:
        verdict, ivs = judge(diffs, cfg.ci)
        why = {u: health[u]["problems"] for u in involved if health.get(u, {}).get("problems")}
        if why:
            verdict = "invalid"
            detail = "; ".join(f"`{u}`: {', '.join(p)}" for u, p in why.items()) + f" (numbers: {detail})"
        return {"claim": claim, "verdict": verdict, "numbers": numbers,
                "intervals": ivs, "detail": detail, "involves": involved}

    def skipped(claim: str, detail: str) -> dict:
        return {"claim": claim, "verdict": "not evaluated", "detail": detail}

    name, pct = metric.upper(), f"{cfg.ci:.0%}"
    out: dict[str, dict] = {}
    ssl = [s for s in cfg.ssl_sizes if s in table]
    claim = f"every SSL size beats the `{cfg.control}` control at every budget"
    if cfg.control in table and ssl:
        diffs = {f"{s}@{b}": r(s, b) - r(cfg.control, b) for s in ssl for b in budgets}
        wins = sum(err(s, b) < err(cfg.control, b) for s in ssl for b in budgets)
        numbers = {b: {u: round(err(u, b), 4) for u in [*ssl, cfg.control]} for b in budgets}
        out["F0"] = finish(claim, [*ssl, cfg.control], diffs,
                           f"{wins}/{len(diffs)} (size, budget) pairs beat the control on the means", numbers)
    else:
        out["F0"] = skipped(claim, f"`{cfg.control}` or the SSL sizes are not among the upstreams")
    s, big = cfg.smaller, cfg.larger
    if s in table and big in table:
        numbers = {b: {big: round(err(big, b), 4), s: round(err(s, b), 4)} for b in budgets}
        wins = sum(err(big, b) < err(s, b) for b in budgets)
        out["F1"] = finish(f"`{big}` has a lower weighted {name} than `{s}` at every budget", [s, big],
                           {b: r(big, b) - r(s, b) for b in budgets},
                           f"better on the means at {wins}/{len(budgets)} budgets", numbers)
        claim = f"from {large_b} to {small_b} min, `{big}` degrades less than `{s}` (relative)"
        dl, dsm = (relative_degradation(err(u, small_b), err(u, large_b)) for u in (big, s))
        if dl is None or dsm is None:
            out["F2"] = skipped(claim, "undefined: zero error at the largest budget")
        else:
            diff = deg(r(big, small_b), r(big, large_b)) - deg(r(s, small_b), r(s, large_b))
            lo, hi = M.interval(diff, cfg.ci)
            out["F2"] = finish(claim, [s, big], {"degradation difference": diff},
                               f"{big} {dl:+.1%} vs {s} {dsm:+.1%}; difference {dl - dsm:+.1%} "
                               f"[{pct} interval {lo:+.1%}, {hi:+.1%}]",
                               {big: round(dl, 4), s: round(dsm, 4)})
    else:
        for f in ("F1", "F2"):
            out[f] = skipped(f"{big} vs {s}", f"`{s}`/`{big}` missing")
    if big in table and cfg.baseline in table:
        fb, lg = err(cfg.baseline, small_b), err(big, small_b)
        gain = (fb - lg) / fb if fb > 0 else 0.0
        rf = r(cfg.baseline, small_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            gains = (rf - r(big, small_b)) / rf
        lo, hi = M.interval(gains, cfg.ci)
        out["F3"] = finish(f"at {small_b} min, `{big}` beats `{cfg.baseline}` by >= {cfg.f3_margin:.0%} "
                                 "relative", [big, cfg.baseline], {"margin - gain": cfg.f3_margin - gains},
                           f"{big} {lg:.3f} vs {cfg.baseline} {fb:.3f}: {gain:+.1%} relative "
                           f"[{pct} interval {lo:+.1%}, {hi:+.1%}]",
                           {big: round(lg, 4), cfg.baseline: round(fb, 4), "relative_gain": round(gain, 4)})
    else:
        out["F3"] = skipped(f"{big} vs {cfg.baseline}", f"`{big}` or `{cfg.baseline}` missing")
    return out


def build(eval_dir: str | Path, cfg: ReportConfig, pretraining: Mapping[str, dict] | None = None) -> dict:
    """Everything the report writes, as one dict (numbers only; files are written by `write_report`).
    `pretraining`: size -> pretraining metrics; when given, a missing or non-finite one invalidates findings."""
    runs = load_runs(eval_dir, cfg)
    agg = aggregate(runs, cfg)
    reps = agg.pop("replicates")
    health = upstream_health(runs, cfg, pretraining)
    table = agg["table"]
    largest = budget_name(max(cfg.budgets_min))
    metric, why = judged_metric(table, largest, cfg.wer_threshold)
    match = None
    if cfg.smaller in table and cfg.larger in table:
        hrs = [b / 60 for b in cfg.budgets_min]
        target = table[cfg.smaller][largest]["weighted"][metric]
        curve = [table[cfg.larger][budget_name(b)]["weighted"][metric] for b in cfg.budgets_min]
        match = {**hours_to_match(hrs, curve, target), "target": target, "metric": metric,
                 "largest_hours": max(hrs)}
        match["ratio"] = max(hrs) / match["hours"] if match["hours"] else None
    total = sum(h["runs"] for h in health.values())
    converged = sum(h["converged"] for h in health.values())
    return {"judged_on": metric, "judged_why": why, "largest_budget": largest, **agg,
            "findings": findings(table, reps, cfg, metric, health), "match": match, "health": health,
            "converged": {"runs": total, "converged": converged,
                          "valid": total > 0 and converged >= cfg.min_converged * total},
            "pretraining": dict(pretraining or {}), "weights_source": M.weights_description(cfg.weights)}


# --- files ------------------------------------------

def curve_rows(result: dict, cfg: ReportConfig) -> list[dict]:
    """Long table for DVC plots: one row per (upstream, budget)."""
    m = result["judged_on"]
    rows = []
    for u in cfg.upstreams:
        for b in cfg.budgets_min:
            e = result["table"][u][budget_name(b)]
            w = e["weighted"]
            rows.append({"upstream": u, "budget_minutes": b, "hours": round(b / 60, 6), "metric": m,
                         "weighted_error": w[m], "weighted_error_std": w[f"{m}_std"],
                         "ci_low": w[f"{m}_ci"][0], "ci_high": w[f"{m}_ci"][1],
                         "rel_degradation": w[f"{m}_rel_degradation"],
                         "weighted_wer": w["wer"], "weighted_wer_std": w["wer_std"],
                         "weighted_cer": w["cer"], "weighted_cer_std": w["cer_std"], "seeds": e["seeds"]})
    return rows


def per_test_rows(result: dict, cfg: ReportConfig) -> list[dict]:
    rows = []
    for u in cfg.upstreams:
        for b in cfg.budgets_min:
            for t, v in result["table"][u][budget_name(b)]["tests"].items():
                rows.append({"upstream": u, "budget_minutes": b, "hours": round(b / 60, 6), "test_set": t,
                             **v})
    return rows


def metrics_summary(result: dict) -> dict:
    """The DVC metrics file: seed means per upstream and budget, findings, the matching hours."""
    out: dict[str, Any] = {"judged_on": result["judged_on"], "weights": result["weights_source"],
                           "findings": {k: v["verdict"] for k, v in result["findings"].items()},
                           "converged_runs": result["converged"]}
    out["weighted"] = {u: {b: {k: round(v, 4) for k, v in e["weighted"].items() if isinstance(v, float)}
                           for b, e in by_b.items()} for u, by_b in result["table"].items()}
    out["tests"] = {u: {b: {t: {m: round(v[m], 4) for m in METRICS} for t, v in e["tests"].items()}
                        for b, e in by_b.items()} for u, by_b in result["table"].items()}
    if result["match"]:
        out["match_hours"] = result["match"]["hours"]
        out["match_ratio"] = result["match"]["ratio"]
    return out


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:+.1%}" if pct else f"{v:.3f}"


def results_markdown(result: dict, cfg: ReportConfig, figures: Sequence[str]) -> str:
    m = result["judged_on"]
    budgets = [budget_name(b) for b in cfg.budgets_min]
    head = "| upstream | " + " | ".join(f"{b} min ({float(b) / 60:.3g} h)" for b in budgets) + " |"
    sep = "|---" * (len(budgets) + 1) + "|"
    lines = ["# Sample efficiency: error rate against labeled hours", "",
             f"Upstreams: {', '.join(cfg.upstreams)}; budgets: {', '.join(budgets)} min; seeds: {cfg.seeds}; "
             f"test sets: {', '.join(result['test_sets'])}.",
             f"Weighted error = sum over test sets of w_i x error_i, weights: {result['weights_source']} "
             f"({', '.join(f'{t} {w:.3f}' for t, w in result['weights'].items())}).",
             f"**Findings judged on weighted {m.upper()}**: {result['judged_why']}.", ""]
    for metric in METRICS:
        lines += [f"## Weighted {metric.upper()} (mean ± std over seeds; [95% bootstrap interval of the "
                  "mean])", "", head, sep]
        for u in cfg.upstreams:
            cells = []
            for b in budgets:
                w = result["table"][u][b]["weighted"]
                cells.append(f"{w[metric]:.3f} ± {w[f'{metric}_std']:.3f} "
                             f"[{w[f'{metric}_ci'][0]:.3f}, {w[f'{metric}_ci'][1]:.3f}]")
            lines.append(f"| {u} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"## Relative degradation of weighted {m.upper()} against the largest budget", "", head, sep]
    for u in cfg.upstreams:
        cells = (_fmt(result["table"][u][b]["weighted"][f"{m}_rel_degradation"], pct=True) for b in budgets)
        lines.append(f"| {u} | " + " | ".join(cells) + " |")
    conv = result["converged"]
    lines += ["", "## Findings", "",
              f"Verdicts: **holds** only when the {cfg.ci:.0%} paired bootstrap interval (utterances and seeds) "
              "of every difference the claim makes lies on its side; **inconclusive** when one straddles zero; "
              "**invalid** when an upstream involved is unsound (degenerate, not converged, pretraining "
              "non-finite or missing).",
              f"Downstream convergence: {conv['converged']}/{conv['runs']} finetunes stopped by patience "
              f"(not by the step maximum): the comparison is "
              + ("**valid**." if conv["valid"] else f"**not valid** (needs >= {cfg.min_converged:.0%})."), ""]
    for k in ("F0", "F1", "F2", "F3"):
        f = result["findings"][k]
        verdict = f["verdict"] if f["verdict"] == "not evaluated" else f"**{f['verdict']}**"
        lines.append(f"- **{k}** ({f['claim']}): {verdict}. {f['detail']}.")
        if f.get("numbers") and k in ("F0", "F1"):
            lines.append("  " + "; ".join(f"{b} min: " + ", ".join(f"{u} {v:.3f}" for u, v in nums.items())
                                           for b, nums in f["numbers"].items()))
    match = result["match"]
    if match:
        if match["ratio"]:
            at_least = "at least " if match["kind"] == "at_most" else ""
            reach = f"reaches it at {match['text']}: {at_least}{match['ratio']:.3g}x less labeled data."
        else:
            reach = "does not reach it within the budgets (no extrapolation)."
        lines += ["", "## Label hours the larger model needs to match the smaller one", "",
                  f"`{cfg.smaller}` at the largest budget ({match['largest_hours']:.3g} h): weighted "
                  f"{m.upper()} {match['target']:.3f}. `{cfg.larger}` {reach}"]
    lines += ["", f"## {m.upper()} per test set (mean over seeds)", "",
              "| upstream | budget (min) | " + " | ".join(result["test_sets"]) + " |",
              "|---|---" + "|---" * len(result["test_sets"]) + "|"]
    for u in cfg.upstreams:
        for b in budgets:
            tests = result["table"][u][b]["tests"]
            cells = (f"{tests[t][m]:.3f}" for t in result["test_sets"])
            lines.append(f"| {u} | {b} | " + " | ".join(cells) + " |")
    lines += ["", "## Upstream soundness", "", "| upstream | finetunes | converged (patience) | degenerate "
              "| problems |", "|---|---|---|---|---|"]
    for u, h in result["health"].items():
        lines.append(f"| {u} | {h['runs']} | {h['converged']} | {len(h['degenerate'])} "
                     f"| {'; '.join(h['problems']) or 'none'} |")
    lines += ["", "## Training diagnostics (mean over seeds)", "",
              "| upstream | budget (min) | steps | stopped by patience | stopped at max_steps | degenerate "
              "| best dev CER | layer weights |", "|---|---|---|---|---|---|---|---|"]
    for u in cfg.upstreams:
        for b in budgets:
            tr = result["table"][u][b].get("training", {})
            lw = tr.get("layer_weights")
            weights = ", ".join(f"{w:.2f}" for w in lw) if lw else "n/a"
            steps = f"{tr['steps']:.0f}" if "steps" in tr else "n/a"
            lines.append(f"| {u} | {b} | {steps} | {tr.get('stopped_early', 'n/a')} "
                         f"| {tr.get('stopped_at_max', 'n/a')} | {tr.get('degenerate', 0)} "
                         f"| {_fmt(tr.get('best_dev_cer'))} "
                         f"| {weights} |")
    if result.get("pretraining"):
        lines += ["", "## SSL pretraining (evidence for the premise F0)", "",
                  "| size | parameters | updates | wall (s) | final loss | masked accuracy | target usage "
                  "| target perplexity |", "|---|---|---|---|---|---|---|---|"]
        for size, pm in result["pretraining"].items():
            lines.append(f"| {size} | {pm.get('parameters', 0) / 1e6:.1f}M | {pm.get('steps', 'n/a')} "
                         f"| {pm.get('wall_seconds', 'n/a')} | {_fmt(pm.get('train/loss'))} "
                         f"| {_fmt(pm.get('train/masked_acc'))} | {_fmt(pm.get('train/target_usage'))} "
                         f"| {pm.get('train/target_ppl', float('nan')):.0f} |")
    lines += ["", "## Figures", ""] + [f"- [{Path(f).name}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def plot_curves(result: dict, cfg: ReportConfig, metric: str, path: str | Path) -> None:
    """Weighted error against labeled hours (log x), one line per upstream, bootstrap band, seed spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    hours = [b / 60 for b in cfg.budgets_min]
    for u in cfg.upstreams:
        ws = [result["table"][u][budget_name(b)]["weighted"] for b in cfg.budgets_min]
        mean = [w[metric] for w in ws]
        line, = ax.plot(hours, mean, marker="o", label=u)
        ax.fill_between(hours, [w[f"{metric}_ci"][0] for w in ws], [w[f"{metric}_ci"][1] for w in ws],
                        color=line.get_color(), alpha=0.18, linewidth=0)
        ax.errorbar(hours, mean, yerr=[w[f"{metric}_std"] for w in ws], fmt="none", ecolor=line.get_color(),
                    capsize=3, linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("labeled hours (log scale)")
    ax.set_ylabel(f"weighted {metric.upper()}")
    ax.set_title(f"Weighted {metric.upper()} vs labeled hours (band: 95% bootstrap CI, bars: seed std)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="upstream")
    _save(fig, path)


def plot_per_test(result: dict, cfg: ReportConfig, metric: str, path: str | Path) -> None:
    """One panel per test set: error against labeled hours per upstream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = result["test_sets"]
    cols = min(3, len(tests))
    rows = math.ceil(len(tests) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    hours = [b / 60 for b in cfg.budgets_min]
    for ax, t in zip(axes.flat, tests, strict=False):
        for u in cfg.upstreams:
            ax.plot(hours, [result["table"][u][budget_name(b)]["tests"][t][metric] for b in cfg.budgets_min],
                    marker="o", label=u)
        ax.set_xscale("log")
        ax.set_title(t)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("labeled hours")
    for ax in axes.flat[len(tests):]:
        ax.axis("off")
    axes[0][0].set_ylabel(metric.upper())
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{metric.upper()} per test set vs labeled hours (mean over seeds)")
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    from labelbudget.io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_pretraining(histories: Mapping[str, Path], path: str | Path) -> bool:
    """Loss, masked accuracy and target usage against updates, one line per SSL size (Lightning CSV logs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    panels = [("train/loss", "loss"), ("train/masked_acc", "masked accuracy"), ("train/target_usage", "target usage")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    drawn = False
    for size, csv in histories.items():
        df = pd.read_csv(csv)
        for ax, (col, title) in zip(axes, panels, strict=True):
            if col in df:
                d = df[["step", col]].dropna()
                ax.plot(d["step"], d[col], label=size)
                ax.set_title(title)
                ax.set_xlabel("update")
                drawn = True
    if drawn:
        axes[0].legend()
        _save(fig, path)
    plt.close(fig)
    return drawn


def write_report(result: dict, cfg: ReportConfig, out_dir: str | Path) -> dict[str, Path]:
    """reports/metrics.json, runs.json, results.md, sample_efficiency.csv, per_test_set.csv, figures/*.png."""
    import pandas as pd

    from labelbudget.io import write_json, write_text

    out = Path(out_dir)
    figs = out / "figures"
    paths = {f"curve_{m}": figs / f"sample_efficiency_{m}.png" for m in METRICS}
    paths["per_test"] = figs / f"per_test_set_{result['judged_on']}.png"
    for m in METRICS:
        plot_curves(result, cfg, m, paths[f"curve_{m}"])
    plot_per_test(result, cfg, result["judged_on"], paths["per_test"])
    paths["metrics"] = out / "metrics.json"
    write_json(paths["metrics"], metrics_summary(result))
    paths["runs"] = out / "runs.json"
    write_json(paths["runs"], result["runs"])
    paths["curve_csv"] = out / "sample_efficiency.csv"
    write_text(paths["curve_csv"], pd.DataFrame(curve_rows(result, cfg)).to_csv(index=False))
    paths["per_test_csv"] = out / "per_test_set.csv"
    write_text(paths["per_test_csv"], pd.DataFrame(per_test_rows(result, cfg)).to_csv(index=False))
    paths["results"] = out / "results.md"
    rel = [str(p.relative_to(out)) for p in paths.values() if p.suffix == ".png"]
    write_text(paths["results"], results_markdown(result, cfg, rel))
    return paths


def make_report(params: dict, eval_dir: Path, pretrain_dir: Path, out: Path) -> dict:
    """Aggregate every evaluation under `eval_dir` into the report under `out` (see the stage's docstring),
    with the pretraining diagnostics of `pretrain_dir/<size>/`; log it to a W&B run when params has `wandb`."""
    from labelbudget import tracking

    cfg = ReportConfig.from_params(params)
    # Pretraining diagnostics (loss, masked accuracy, target usage) sit beside the findings they explain, and
    # a size whose pretraining is missing or non-finite makes every finding about it invalid.
    pretraining = {s: read_json(pretrain_dir / s / "metrics.json") for s in params.get("ssl_sizes", [])
                   if (pretrain_dir / s / "metrics.json").exists()}
    result = build(eval_dir, cfg, pretraining)
    paths = write_report(result, cfg, out)
    histories = {s: pretrain_dir / s / "history.csv" for s in result["pretraining"]
                 if (pretrain_dir / s / "history.csv").exists()}
    if plot_pretraining(histories, out / "figures" / "pretraining.png"):
        paths["pretraining"] = out / "figures" / "pretraining.png"
    for k, f in result["findings"].items():
        print(f"{k}: {f['verdict']} - {f['detail']}")
    print(f"judged on weighted {result['judged_on'].upper()}; report in {paths['results']}")

    if "wandb" in params:
        import pandas as pd

        import wandb

        run = tracking.init_run(params["wandb"], job_type="report", name="report",
                                config={"upstreams": cfg.upstreams, "budgets_min": cfg.budgets_min,
                                        "seeds": cfg.seeds, "judged_on": result["judged_on"]})
        try:
            run.log({"sample_efficiency": wandb.Table(dataframe=pd.read_csv(paths["curve_csv"])),
                     "per_test_set": wandb.Table(dataframe=pd.read_csv(paths["per_test_csv"])),
                     **{f"figures/{p.stem}": wandb.Image(str(p)) for p in paths.values() if p.suffix == ".png"}})
            tracking.set_summary(run, {f"finding/{k}": f["verdict"] for k, f in result["findings"].items()})
            if result["match"]:
                tracking.set_summary(run, {"match_hours": result["match"]["hours"],
                                           "match_ratio": result["match"]["ratio"]})
        finally:
            tracking.finish(run)
    return result
