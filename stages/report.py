"""Stage `report`: aggregate every evaluation into the sample-efficiency report (labelbudget.report).

Recomputes all numbers from <eval>/*/hyps.jsonl and writes <out>/metrics.json (DVC metrics), runs.json
(upstream x budget x seed), sample_efficiency.csv (DVC plots), per_test_set.csv, phone_probe.csv (phone
accuracy per upstream and layer, from <probe>/*/metrics.json), results.md (the findings F0-F3, the probe
table) and figures/*.png; then logs the table and figures to a W&B summary run (job_type report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelbudget.config import load_params
from labelbudget.errors import run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", type=Path, default=Path("results/eval"), help="the evaluations")
    ap.add_argument("--pretrain", type=Path, default=Path("models/pretrain"), help="pretraining diagnostics")
    ap.add_argument("--probe", type=Path, default=Path("results/probe"), help="phone probes per upstream")
    ap.add_argument("--out", type=Path, default=Path("reports"))
    args = ap.parse_args(argv)
    from labelbudget.report import make_report

    make_report(load_params(), args.eval, args.pretrain, args.out, args.probe)


if __name__ == "__main__":
    sys.exit(run_stage(main))
