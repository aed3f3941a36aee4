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

Modules: aggregate (runs, table, bootstrap), findings (verdicts, soundness), render (files), plots (figures),
build (end to end: `build` computes, `make_report` writes and logs).
"""

from labelbudget.report.aggregate import (
    ReportConfig,
    ReportError,
    Run,
    aggregate,
    bootstrap_replicates,
    hours_to_match,
    judged_metric,
    load_runs,
)
from labelbudget.report.build import build, make_report
from labelbudget.report.findings import findings, judge, upstream_health
from labelbudget.report.plots import plot_pretraining
from labelbudget.report.render import write_report

__all__ = ["ReportConfig", "ReportError", "Run", "aggregate", "bootstrap_replicates", "build", "findings",
           "hours_to_match", "judge", "judged_metric", "load_runs", "make_report", "plot_pretraining",
           "upstream_health", "write_report"]
