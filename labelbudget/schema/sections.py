"""The sections of params.yaml and the rules between them (`Params`): types, ranges and known keys. Every field
is required: defaults live in conf/ only."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from labelbudget.schema.base import (
    Budget,
    Fraction,
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Section,
    _unique,
    modules_of,
)

TEST_SETS = ("in_domain", "unseen_accents", "noisy", "reverb", "telephone", "rate_extremes")  # synthesized domains
# Options each built-in upstream kind takes beside `kind` and `source`; a kind added as a module takes any.
KIND_OPTIONS = {"ssl": {"size"}, "random": {"size"}, "fbank": set(), "hf": {"model", "normalize", "revision"}}
PRECISIONS = ("auto", "32", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "64", "64-true")



class Wandb(Section):
    project: str
    group: str
    mode: Literal["offline", "online", "disabled"]


class Synth(Section):
    unlabeled_hours: Positive
    labeled_hours: Positive
    test_utterances: PositiveInt
    test_sets: Annotated[list[Literal[TEST_SETS]], Field(min_length=1)]  # type: ignore[valid-type]
    shard_size: PositiveInt
    workers: NonNegativeInt

    _unique_sets = field_validator("test_sets")(_unique)


class Ingest(Section):
    path: str
    unlabeled: str | list[str]
    labeled: str | list[str]
    tests: dict[str, str | list[str]]
    held_out_speakers: Literal["tests"] | list[str]


class Corpus(Section):
    source: Literal["synth", "librispeech", "commonvoice", "manifest"]
    synth: Synth
    ingest: Ingest

    @model_validator(mode="after")
    def _ingest_named(self) -> Corpus:
        if self.source != "synth" and not self.ingest.path:
            raise ValueError(f"source {self.source!r} needs corpus.ingest.path, the root folder of your corpus")
        if self.source != "synth" and not self.ingest.tests:
            raise ValueError(f"source {self.source!r} needs corpus.ingest.tests, e.g. {{clean: test-clean}}")
        return self


class Validate(Section):
    sample_rate: PositiveInt
    min_duration: NonNegative
    max_duration: Positive
    duration_tolerance: NonNegative
    silence_db: Annotated[float, Field(le=0)]
    max_clipped_fraction: Fraction
    report_rows: PositiveInt
    workers: NonNegativeInt
    labeled_in_unlabeled: Literal["auto", "allow", "forbid"]

    @model_validator(mode="after")
    def _durations(self) -> Validate:
        if self.max_duration <= self.min_duration:
            raise ValueError(f"max_duration {self.max_duration} must exceed min_duration {self.min_duration}")
        return self


class Subsets(Section):
    dev_minutes: Positive
    budgets_min: Annotated[list[Budget], Field(min_length=1)]
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1)]
    tolerance: Annotated[float, Field(ge=0, lt=1)]

    _unique_lists = field_validator("budgets_min", "seeds")(_unique)


class Upstream(Section):
    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str
    source: str
    size: str | None = None

    @model_validator(mode="after")
    def _known_kind(self) -> Upstream:
        kinds = upstream_kinds()
        if self.kind not in kinds:
            raise ValueError(f"kind {self.kind!r} is not a module of labelbudget/upstreams ({', '.join(kinds)})")
        if self.kind in KIND_OPTIONS:
            given = {k for k in (self.model_extra or {})} | ({"size"} if self.size is not None else set())
            unknown = sorted(given - KIND_OPTIONS[self.kind])
            if unknown:
                allowed = ", ".join(["kind", "source", *sorted(KIND_OPTIONS[self.kind])])
                raise ValueError(f"unknown option(s) {', '.join(unknown)} for kind {self.kind}; allowed: {allowed}")
        if self.kind == "random" and self.size is None:
            raise ValueError("kind random needs `size`: the encoder shape (a key of `models`) it leaves untrained")
        return self


class Model(Section):
    layers: PositiveInt
    dim: PositiveInt
    heads: PositiveInt
    ff_mult: PositiveInt
    conv_channels: PositiveInt
    dropout: Annotated[float, Field(ge=0, lt=1)]
    pos_kernel: PositiveInt

    @model_validator(mode="after")
    def _heads_divide(self) -> Model:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        return self


class Features(Section):
    n_mels: PositiveInt


class Pretrain(Section):
    objective: str  # a module of labelbudget/objectives

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: str) -> str:
        names = modules_of("labelbudget.objectives")
        if v not in names:
            raise ValueError(f"not a module of labelbudget/objectives ({', '.join(names)})")
        return v
    max_steps: PositiveInt
    max_minutes: Positive
    batch_seconds: Positive
    lr: Positive
    frontend_lr_scale: Positive  # the front end's rate (subsampling convs, positional conv) as a multiple of lr
    transformer_lr_scale: Positive  # the Transformer layers' rate as a multiple of lr
    warmup_steps: NonNegativeInt
    weight_decay: NonNegative
    grad_clip: Positive
    mask_prob: Annotated[float, Field(gt=0, lt=1)]
    mask_span: PositiveInt
    codebook_size: Annotated[int, Field(ge=2)]
    codebook_dim: PositiveInt
    kmeans_clusters: Annotated[int, Field(ge=2)]
    kmeans_utterances: PositiveInt
    kmeans_layer: NonNegativeInt | None  # hubert: k-means on a never-trained encoder's layer (None: log-mel)
    reconstruction_weight: NonNegative
    clean_targets: bool  # targets from clean renderings of the degraded unlabeled audio (synth corpus)
    input_corruption: Fraction  # share of utterances whose input (not targets) is degraded on the fly
    head_layers: NonNegativeInt  # Transformer layers of the prediction head apart from the encoder
    unmasked_weight: NonNegative  # loss weight of the visible frames' targets (0: masked frames only)
    infonce_weight: NonNegative  # contrastive term, distractors from the same utterance (0: off)
    precision: Literal[PRECISIONS] | Literal[16, 32, 64]  # type: ignore[valid-type]
    checkpoint_every: PositiveInt
    devices: PositiveInt | Literal["auto"]
    num_nodes: PositiveInt
    strategy: str
    num_threads: NonNegativeInt


class Topline(Section):
    size: str
    objective: Literal["phones"]
    unmasked_weight: NonNegative | None = None  # an override of pretrain.unmasked_weight (None: the same)


def upstream_kinds() -> list[str]:
    return modules_of("labelbudget.upstreams")
