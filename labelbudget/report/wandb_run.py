"""The report's W&B run: every scored row as one W&B Table, and W&B's own line charts of weighted WER/CER and
per-test-set CER against labeled hours, one line per upstream (fitted curves beside the points), so the
comparison needs no hand-built panel. W&B's line charts have no log axis: x is log10 of the labeled hours."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelbudget.report.aggregate import METRICS, ReportConfig
from labelbudget.runs import budget_name

if TYPE_CHECKING:
    from labelbudget.schema import Params

ROW_COLUMNS = ["upstream", "kind", "size", "objective", "budget_minutes", "budget_hours", "seed", "test_set",
               "wer", "cer"]
X_NAME = "log10 labeled hours"


def result_rows(result: dict, params: Params) -> list[list[Any]]:
    """One row per (upstream, budget, seed, test set), plus the weighted score as test set `weighted`."""
    from labelbudget.tracking import group_keys

    rows = []
    for u, by_budget in result["runs"].items():
        keys = group_keys(params, u)
        for b, by_seed in by_budget.items():
            for seed, r in by_seed.items():
                scores = {**r["tests"], "weighted": r["weighted"]}
                for t, v in scores.items():
                    rows.append([u, keys["kind"], keys["size"], keys["objective"], float(b), float(b) / 60,
                                 int(seed), t, v["wer"], v["cer"]])
    return rows


def chart_series(result: dict, cfg: ReportConfig, metric: str, test_set: str | None = None
                 ) -> tuple[list[list[float]], list[list[float]], list[str]]:
    """(xs, ys, keys) of one line chart: each upstream's seed means, then (weighted only) its fitted curve."""
    xs, ys, keys = [], [], []
    hours = [math.log10(b / 60) for b in cfg.budgets_min]
    for u in cfg.upstreams:
        cells = [result["table"][u][budget_name(b)] for b in cfg.budgets_min]
        ys.append([(c["tests"][test_set] if test_set else c["weighted"])[metric] for c in cells])
        xs.append(hours)
        keys.append(f"{u} (calibration)" if u in cfg.toplines else u)
    bands = {} if test_set else (result.get("curves") or {}).get(metric, {}).get("bands", {})
    for u, band in bands.items():
        xs.append([math.log10(h) for h in band["hours"]])
        ys.append(band["fit"])
        keys.append(f"{u} fit")
    return xs, ys, keys


def log_report(params: Params, cfg: ReportConfig, result: dict, paths: dict[str, Path]) -> None:
    import pandas as pd
    import wandb

    from labelbudget import tracking

    run = tracking.init_run(params.wandb, job_type="report", name="report",
                            config={"upstreams": cfg.upstreams, "budgets_min": cfg.budgets_min, "seeds": cfg.seeds,
                                    "judged_on": result["judged_on"], "profile": params.profile,
                                    "commit": tracking.commit()})
    try:
        tables = {k: pd.read_csv(paths[f]) for k, f in (("sample_efficiency", "curve_csv"),
                                                         ("per_test_set", "per_test_csv"),
                                                         ("phone_probe", "probe_csv"))}
        charts = {}
        for m in METRICS:
            xs, ys, keys = chart_series(result, cfg, m)
            charts[f"charts/weighted_{m}"] = wandb.plot.line_series(
                xs=xs, ys=ys, keys=keys, title=f"Weighted {m.upper()} vs labeled hours", xname=X_NAME)
        for t in result["test_sets"]:
            xs, ys, keys = chart_series(result, cfg, "cer", t)
            charts[f"charts/cer_{t}"] = wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=f"CER on {t}",
                                                               xname=X_NAME)
        run.log({"results": wandb.Table(columns=ROW_COLUMNS, data=result_rows(result, params)),
                 **{k: wandb.Table(dataframe=df) for k, df in tables.items() if len(df)}, **charts,
                 **{f"figures/{p.stem}": wandb.Image(str(p)) for p in paths.values() if p.suffix == ".png"}})
        tracking.set_summary(run, {f"finding/{k}": f["verdict"] for k, f in result["findings"].items()})
        tracking.set_summary(run, {f"comparison/{k}/{b}": v for k, c in result["comparisons"].items()
                                   for b, v in c["verdicts"].items()})
        if result["match"]:
            tracking.set_summary(run, {"match_hours": result["match"]["hours"],
                                       "match_ratio": result["match"]["ratio"]})
    finally:
        tracking.finish(run)
