"""The data gate: Great Expectations suites over every manifest row plus checks of every audio file.

Every file is decoded once (in a process pool) and what was measured becomes columns of one dataframe, a row
per utterance of every part (sample rate, channels, frames, RMS level, clipped fraction, content hash, ...).
Great Expectations then asserts the rules on those columns, so each failing rule comes back with the exact
rows that broke it. Validation only reads: it never modifies, moves or deletes a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from labelbudget.io import write_json, write_text
from labelbudget.manifest import Corpus
from labelbudget.validation.probing import probe_file, probe_files
from labelbudget.validation.report import make_report, summary_markdown
from labelbudget.validation.rules import (
    add_checks,
    allowed_pairs,
    build_rules,
    read_rows,
    run_expectations,
    sentences_of_tests,
)

if TYPE_CHECKING:
    from labelbudget.schema import Validate

__all__ = ["probe_file", "probe_files", "summary_markdown", "validate_corpus", "write_report"]


def validate_corpus(corpus: Corpus, cfg: Validate, progress: bool = True) -> dict:
    """Run every rule over every part of `corpus` with the `validate` params `cfg`; return the report."""
    allowed = allowed_pairs(cfg, corpus)
    df = add_checks(read_rows(corpus), corpus, workers=cfg.workers, progress=progress, allowed=allowed)
    rules = build_rules(cfg, corpus, sentences_of_tests(df), allowed)
    return make_report(df, rules, run_expectations(df, rules), corpus, cfg)


def write_report(report: dict, out_dir: str | Path, max_rows: int = 10) -> str:
    """Write `report.json` and `summary.md` into `out_dir`; return the summary text."""
    out_dir = Path(out_dir)
    summary = summary_markdown(report, max_rows)
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "summary.md", summary)
    return summary
