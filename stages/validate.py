"""Stage `validate`: the Great Expectations gate over data/corpus; failing it stops the pipeline before
any training."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from labelbudget.config import load_params
from labelbudget.errors import EXIT_KNOWN, run_stage
from labelbudget.manifest import Corpus
from labelbudget.validation import validate_corpus, write_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--out", type=Path, default=Path("data/validation"), help="report.json and summary.md")
    args = ap.parse_args(argv)
    cfg = load_params().validation
    start = time.time()
    report = validate_corpus(Corpus.load(args.corpus), cfg)
    summary = write_report(report, args.out, max_rows=cfg.report_rows)
    rules = len(report["rules"])
    if not report["passed"]:
        print(summary)
        print(f"error: validation FAILED: {len(report['failed_rules'])} of {rules} rules; see {args.out}/summary.md",
              file=sys.stderr)
        return EXIT_KNOWN  # the same corpus fails the same way: not worth a retry
    print(f"validation passed: {rules} rules over {sum(report['parts'].values())} utterances "
          f"in {time.time() - start:.1f} s; report in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
