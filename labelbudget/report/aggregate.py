"""Every evaluation of the experiment, found by the identity its metrics.json states, aggregated: upstream x
budget -> per test set and weighted WER/CER over seeds, and the paired bootstrap replicates behind every interval."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelbudget import metrics as M
from labelbudget.errors import LabelbudgetError
from labelbudget.io import read_json, read_jsonl
from labelbudget.runs import budget_name

if TYPE_CHECKING:
    from labelbudget.schema import Params

METRICS = ("wer", "cer")


COUNT_KEYS = ("word_errors", "words", "char_errors", "chars")


class ReportError(LabelbudgetError, ValueError):
    pass


@dataclass
class ReportConfig:
    """What the report reads of params (`report`, `evaluate`, the grid of `subsets`), in one place."""

    upstreams: list[str]
    ssl_sizes: list[str]
    budgets_min: list[float]  # as spelled in params (2, 2.5, 6000000): they name stages and files
    seeds: list[int]
    smaller: str | None
    larger: str | None
    baseline: str | None
    control: str | None
    wer_threshold: float
    f3_margin: float
    min_converged: float  # share of an upstream's finetunes that must stop by patience
    weights: Any
    bootstrap: int
    ci: float
    seed: int
    toplines: list[str]  # calibration upstreams: never in F0-F3

    @classmethod
    def from_params(cls, params: Params) -> ReportConfig:
        r, e = params.report, params.evaluate
        return cls(upstreams=list(params.upstreams), ssl_sizes=list(params.ssl_sizes),
                   budgets_min=sorted(params.subsets.budgets_min, key=float), seeds=list(params.subsets.seeds),
                   smaller=r.smaller, larger=r.larger, baseline=r.baseline, control=r.control,
                   wer_threshold=r.wer_threshold, f3_margin=r.f3_margin, min_converged=r.min_converged,
                   weights=e.weights, bootstrap=e.bootstrap, ci=e.ci, seed=e.bootstrap_seed,
                   toplines=[t for t in params.toplines if t in params.upstreams])


@dataclass
class Run:
    upstream: str
    budget_min: float
    seed: int
    rows: list[dict]
    info: dict = field(default_factory=dict)


def index_runs(eval_dir: Path) -> dict[tuple[str, float, int], tuple[Path, dict]]:
    """Every evaluation under `eval_dir` (its folder and metrics.json) by the identity its metrics.json states
    (upstream, budget, seed), whatever its folder is called."""
    found: dict[tuple[str, float, int], tuple[Path, dict]] = {}
    for f in sorted(Path(eval_dir).glob("*/metrics.json")):
        m = read_json(f)
        try:
            key = (str(m["upstream"]), float(m["budget_minutes"]), int(m["seed"]))
        except (KeyError, TypeError, ValueError):
            raise ReportError(f"{f}: does not name its run (upstream, budget_minutes, seed); re-run its "
                              "`evaluate` stage") from None
        if key in found:
            raise ReportError(f"{f} and {found[key][0] / 'metrics.json'} both claim run {key}")
        found[key] = (f.parent, m)
    return found


def load_runs(eval_dir: str | Path, cfg: ReportConfig) -> list[Run]:
    """Per-utterance results of every (upstream, budget, seed) in params; names every missing run."""
    runs, missing = [], []
    found = index_runs(Path(eval_dir))
    for u in cfg.upstreams:
        for b in cfg.budgets_min:
            for s in cfg.seeds:
                d, info = found.get((u, float(b), int(s)), (None, {}))
                if d is None or not (d / "hyps.jsonl").exists():
                    missing.append(f"{u}-{budget_name(b)}-{s}")
                    continue
                rows = sorted(read_jsonl(d / "hyps.jsonl"), key=lambda r: (r["test_set"], r["id"]))
                runs.append(Run(u, b, s, rows, info))
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
