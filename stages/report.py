"""Stage `report`: aggregate every evaluation into the sample-efficiency report.

Recomputes all numbers from results/eval/*/hyps.jsonl and writes reports/metrics.json (DVC metrics),
reports/runs.json (upstream x budget x seed), reports/sample_efficiency.csv (DVC plots),
reports/per_test_set.csv, reports/results.md (the findings F0-F3) and reports/figures/*.png; then logs the
table and figures to a W&B summary run (job_type report).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from labelbudget.config import load_params
from labelbudget.io import read_json

EVAL = Path("results/eval")
PRETRAIN = Path("models/pretrain")
OUT = Path("reports")


def run(params: dict) -> dict:
    from labelbudget import report, tracking

    cfg = report.ReportConfig.from_params(params)
    # Pretraining diagnostics (loss, masked accuracy, target usage) sit beside the findings they explain, and
    # a size whose pretraining is missing or non-finite makes every finding about it invalid.
    pretraining = {s: read_json(PRETRAIN / s / "metrics.json") for s in params.get("ssl_sizes", [])
                   if (PRETRAIN / s / "metrics.json").exists()}
    result = report.build(EVAL, cfg, pretraining)
    paths = report.write_report(result, cfg, OUT)
    histories = {s: PRETRAIN / s / "history.csv" for s in result["pretraining"]
                 if (PRETRAIN / s / "history.csv").exists()}
    if report.plot_pretraining(histories, OUT / "figures" / "pretraining.png"):
        paths["pretraining"] = OUT / "figures" / "pretraining.png"
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    run(load_params())


if __name__ == "__main__":
    main()
