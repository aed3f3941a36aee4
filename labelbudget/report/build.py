"""The report from end to end: evaluations -> table, findings, match -> files, figures and a W&B summary run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from labelbudget import metrics as M
from labelbudget.io import read_json
from labelbudget.report.aggregate import (
    METRICS,
    ReportConfig,
    aggregate,
    hours_to_match,
    judged_metric,
    load_runs,
)
from labelbudget.report.calibration import comparisons, error_gap_shares, probe_gap_shares, sensitivity
from labelbudget.report.curves import fit_curves
from labelbudget.report.findings import findings, upstream_health
from labelbudget.report.plots import plot_pretraining
from labelbudget.report.render import write_report
from labelbudget.runs import budget_name

if TYPE_CHECKING:
    from labelbudget.schema import Params


def build(eval_dir: str | Path, cfg: ReportConfig, pretraining: Mapping[str, dict] | None = None,
          probe: Mapping[str, dict] | None = None) -> dict:
    """Everything the report writes, as one dict (numbers only; files are written by `write_report`).
    `pretraining`: size -> pretraining metrics; when given, a missing or non-finite one invalidates findings.
    `probe`: upstream -> its phone probe (labelbudget.probe), shown beside the findings, judged by none."""
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
    comps = comparisons(reps, cfg, table, metric, health)
    calibration = {"sensitivity": sensitivity(comps, cfg), "error_gap": error_gap_shares(table, reps, cfg, metric),
                   "probe_gap": probe_gap_shares(probe or {}, cfg)}
    curves = {m: fit_curves(table, agg["runs"], reps, cfg.budgets_min, m, cfg.ci, cfg.smaller, cfg.larger)
              for m in METRICS}
    total = sum(h["runs"] for h in health.values())
    converged = sum(h["converged"] for h in health.values())
    return {"judged_on": metric, "judged_why": why, "largest_budget": largest, **agg,
            "findings": findings(table, reps, cfg, metric, health), "match": match, "health": health,
            "comparisons": comps, "calibration": calibration, "curves": curves,
            "converged": {"runs": total, "converged": converged,
                          "valid": total > 0 and converged >= cfg.min_converged * total},
            "pretraining": dict(pretraining or {}), "probe": dict(probe or {}),
            "weights_source": M.weights_description(cfg.weights)}


def make_report(params: Params, eval_dir: Path, pretrain_dir: Path, out: Path, probe_dir: Path | None = None
                ) -> dict:
    """Aggregate every evaluation under `eval_dir` into the report under `out` (see the stage's docstring),
    with the pretraining diagnostics of `pretrain_dir/<size>/` and the phone probes of `probe_dir/<upstream>/`;
    log it to a W&B run (params `wandb`)."""
    cfg = ReportConfig.from_params(params)
    # Pretraining diagnostics (loss, masked accuracy, target usage) sit beside the findings they explain, and
    # a size whose pretraining is missing or non-finite makes every finding about it invalid.
    pretraining = {s: read_json(pretrain_dir / s / "metrics.json") for s in [*params.ssl_sizes,
                                                                             *cfg.toplines]
                   if (pretrain_dir / s / "metrics.json").exists()}
    probe = {u: read_json(probe_dir / u / "metrics.json") for u in cfg.upstreams
             if probe_dir is not None and (probe_dir / u / "metrics.json").exists()}
    result = build(eval_dir, cfg, pretraining, probe)
    paths = write_report(result, cfg, out)
    histories = {s: pretrain_dir / s / "history.csv" for s in result["pretraining"]
                 if (pretrain_dir / s / "history.csv").exists()}
    if plot_pretraining(histories, out / "figures" / "pretraining.png"):
        paths["pretraining"] = out / "figures" / "pretraining.png"
    for k, f in result["findings"].items():
        print(f"{k}: {f['verdict']} - {f['detail']}")
    if result["calibration"]["sensitivity"]:
        c = result["calibration"]["sensitivity"]
        print(f"calibration: {c['verdict']} - {c['detail']}")
    print(f"judged on weighted {result['judged_on'].upper()}; report in {paths['results']}")

    from labelbudget.report.wandb_run import log_report

    log_report(params, cfg, result, paths)
    return result
