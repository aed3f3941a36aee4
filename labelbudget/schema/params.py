"""`Params`: the whole of params.yaml, its sections and the rules between them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from labelbudget.schema.base import (
    NonNegativeInt,
    Section,
    _unique,
)
from labelbudget.schema.measurement import Evaluate, Extract, Finetune, Probe, Report
from labelbudget.schema.sections import (
    Corpus,
    Features,
    Model,
    Pretrain,
    Subsets,
    Topline,
    Upstream,
    Validate,
    Wandb,
)


class Params(Section):
    profile: str
    seed: NonNegativeInt
    wandb: Wandb
    corpus: Corpus
    validation: Validate = Field(alias="validate")
    subsets: Subsets
    ssl_sizes: list[str]
    toplines: dict[str, Topline]
    upstreams: Annotated[dict[str, Upstream], Field(min_length=1)]
    models: dict[str, Model]
    features: Features
    pretrain: Pretrain
    extract: Extract
    probe: Probe
    finetune: Finetune
    evaluate: Evaluate
    report: Report

    _unique_sizes = field_validator("ssl_sizes")(_unique)

    @model_validator(mode="after")
    def _cross_keys(self) -> Params:
        for size in self.ssl_sizes:
            if size not in self.models:
                raise ValueError(f"ssl_sizes: {size!r} has no shape in `models` (have {', '.join(self.models)})")
        layer = self.pretrain.kmeans_layer
        for size in self.ssl_sizes:
            if layer is not None and layer > self.models[size].layers:
                raise ValueError(f"pretrain.kmeans_layer {layer}: size {size!r} has layers 0-{self.models[size].layers}"
                                 " (0: the front end's output)")
        for name, top in self.toplines.items():
            if top.size not in self.models:
                raise ValueError(f"toplines.{name}.size {top.size!r} is not a key of `models`")
            if name in self.ssl_sizes:
                raise ValueError(f"toplines.{name}: the name is also an SSL size; a topline needs its own name")
            if self.corpus.source != "synth":
                raise ValueError(f"toplines.{name} (objective {top.objective}) needs phone alignments, which only "
                                 f"the synthesized corpus has (corpus.source is {self.corpus.source!r}): drop it, "
                                 f"--set 'toplines={{}}' '~upstreams.{name}'")
        for name, spec in self.upstreams.items():
            size = spec.size or name
            if spec.kind == "ssl" and size not in self.ssl_sizes and name not in self.toplines:
                raise ValueError(f"upstreams.{name} is an ssl upstream of size {size!r}, which ssl_sizes "
                                 f"{self.ssl_sizes} does not pre-train; drop it (--set '~upstreams.{name}') "
                                 "or add the size to ssl_sizes")
            if spec.kind == "random" and size not in self.models:
                raise ValueError(f"upstreams.{name}.size {size!r} is not a key of `models`")
        for role in ("smaller", "larger", "baseline", "control"):
            name = getattr(self.report, role)
            if name is not None and name not in self.upstreams:
                raise ValueError(f"report.{role} {name!r} is not an upstream ({', '.join(self.upstreams)}); name "
                                 f"one, or skip the findings that need it: --set report.{role}=null")
        tests = (self.corpus.synth.test_sets if self.corpus.source == "synth" else list(self.corpus.ingest.tests))
        if isinstance(self.evaluate.weights, dict):
            unknown = sorted(set(self.evaluate.weights) - set(tests))
            if unknown:
                raise ValueError(f"evaluate.weights names test sets that do not exist: {unknown} (have {tests})")
        return self
