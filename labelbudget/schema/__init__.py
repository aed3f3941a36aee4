"""The typed schema of params.yaml: types, ranges, known keys and the rules between sections.

`parse_params` runs before anything does: in `labelbudget run` and `labelbudget profile` (before params.yaml is
written) and in every stage's `load_params` (so a plain `dvc repro` stops at the same line). Its error names the
key, the value and what is allowed. The code reads the frozen `Params` it returns by attribute; defaults live
only in conf/ (every field here is required), so no second default can disagree. A budget of 2 stays the int 2
that names stages and files.

With `record_reads(seen)` active, every params leaf read by attribute is added to `seen` as its dotted key
(`pretrain.lr`; a whole section when it is dumped or a mapping iterated): the audit that checks dvc.yaml
declares what each stage reads.
"""

from labelbudget.schema.base import Section, modules_of, record_reads
from labelbudget.schema.measurement import DecoderSpec, Evaluate, Extract, Finetune, Probe, ProbeMonitor, Report
from labelbudget.schema.params import Params
from labelbudget.schema.parse import check_params, is_labelbudget, parse_params
from labelbudget.schema.sections import (
    TEST_SETS,
    Corpus,
    Features,
    Ingest,
    Model,
    Pretrain,
    Subsets,
    Synth,
    Topline,
    Upstream,
    Validate,
    Wandb,
    upstream_kinds,
)

__all__ = ["TEST_SETS", "Corpus", "DecoderSpec", "Evaluate", "Extract", "Features", "Finetune", "Ingest", "Model",
           "Params", "Pretrain", "Probe", "ProbeMonitor", "Report", "Section", "Subsets", "Synth", "Topline",
           "Upstream", "Validate", "Wandb", "check_params", "is_labelbudget", "modules_of", "parse_params",
           "record_reads", "upstream_kinds"]
