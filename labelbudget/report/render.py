"""The report's files: metrics.json (DVC metrics), runs.json, sample_efficiency.csv (DVC plots),
per_test_set.csv and results.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labelbudget.report.aggregate import METRICS, ReportConfig
from labelbudget.report.curves import curves_summary
from labelbudget.report.markdown import results_markdown
from labelbudget.report.plots import plot_curves, plot_per_test, plot_probe
from labelbudget.runs import budget_name


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


PROBE_COLUMNS = ["upstream", "layer", "accuracy", "chance", "best"]


def probe_rows(result: dict) -> list[dict]:
    """Long table of the phone probes: one row per (upstream, layer), weighted and per test set accuracy."""
    rows = []
    for u, pr in result.get("probe", {}).items():
        for layer, acc in pr.get("accuracy", {}).items():
            rows.append({"upstream": u, "layer": int(layer), "accuracy": acc["weighted"],
                         "chance": pr["chance"]["weighted"], "best": int(layer) == pr["best_layer"],
                         **{f"accuracy_{t}": v for t, v in acc["tests"].items()}})
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
    out["comparisons"] = {k: c["verdicts"] for k, c in result.get("comparisons", {}).items()}
    cal = result.get("calibration") or {}
    if cal.get("sensitivity"):
        out["calibration"] = {"verdict": cal["sensitivity"]["verdict"], "topline": cal["sensitivity"]["topline"],
                              "error_gap_share": {s: {b: v["share"] for b, v in by_b.items()}
                                                  for s, by_b in cal["error_gap"].items()},
                              "probe_gap_share": {s: None if v["best"] is None else round(v["best"], 4)
                                                  for s, v in cal["probe_gap"].items()}}
    if result["match"]:
        out["match_hours"] = result["match"]["hours"]
        out["match_ratio"] = result["match"]["ratio"]
    if result.get("curves"):
        out["curves"] = curves_summary(result["curves"][result["judged_on"]])
    probes = {u: pr for u, pr in result.get("probe", {}).items() if "accuracy" in pr}
    if probes:
        out["phone_probe"] = {u: {"best_layer": pr["best_layer"], "accuracy": round(pr["best"], 4),
                                  "chance": round(pr["chance"]["weighted"], 4)} for u, pr in probes.items()}
    return out


def write_report(result: dict, cfg: ReportConfig, out_dir: str | Path) -> dict[str, Path]:
    """reports/metrics.json, runs.json, results.md, sample_efficiency.csv, per_test_set.csv, phone_probe.csv
    (when there are probes), figures/*.png."""
    import pandas as pd

    from labelbudget.io import write_json, write_text

    out = Path(out_dir)
    figs = out / "figures"
    paths = {f"curve_{m}": figs / f"sample_efficiency_{m}.png" for m in METRICS}
    paths["per_test"] = figs / f"per_test_set_{result['judged_on']}.png"
    for m in METRICS:
        plot_curves(result, cfg, m, paths[f"curve_{m}"])
    plot_per_test(result, cfg, result["judged_on"], paths["per_test"])
    if plot_probe(result.get("probe", {}), figs / "phone_probe.png"):
        paths["probe"] = figs / "phone_probe.png"
    rows = probe_rows(result)
    paths["probe_csv"] = out / "phone_probe.csv"  # header only when no upstream has a probe: a stable DVC out
    write_text(paths["probe_csv"], (pd.DataFrame(rows) if rows else pd.DataFrame(columns=PROBE_COLUMNS)
                                    ).to_csv(index=False))
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
