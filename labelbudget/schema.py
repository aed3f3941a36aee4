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

from __future__ import annotations

import importlib.util
import pkgutil
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from labelbudget.errors import ParamsError

TEST_SETS = ("in_domain", "unseen_accents", "noisy", "reverb", "telephone", "rate_extremes")  # synthesized domains
# Options each built-in upstream kind takes beside `kind` and `source`; a kind added as a module takes any.
KIND_OPTIONS = {"ssl": {"size"}, "random": {"size"}, "fbank": set(), "hf": {"model", "normalize", "revision"}}
OWN_SECTIONS = {"corpus", "upstreams", "pretrain", "extract", "probe", "finetune", "evaluate", "report"}
PRECISIONS = ("auto", "32", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "64", "64-true")

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Budget = Annotated[int | float, Field(gt=0)]


_SEEN: set[str] | None = None  # the read audit's record (record_reads), None when off


def record_reads(seen: set[str] | None) -> None:
    """Record every params key read from now on into `seen` (None: stop)."""
    global _SEEN
    _SEEN = seen


class _Reads(dict):
    """A mapping field of the params (`upstreams`, `models`, test-set weights...) that records its reads."""

    def __init__(self, data: dict, prefix: str):
        super().__init__(data)
        self._prefix = prefix

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if _SEEN is not None and not isinstance(value, BaseModel):
            _SEEN.add(f"{self._prefix}.{key}")
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def _whole(self) -> None:
        if _SEEN is not None:
            _SEEN.add(self._prefix)

    def __iter__(self):
        self._whole()
        return super().__iter__()

    def keys(self):
        self._whole()
        return super().keys()

    def items(self):
        self._whole()
        return super().items()

    def values(self):
        self._whole()
        return super().values()


class Section(BaseModel):
    """A frozen params section that knows its dotted key (for the read audit and error messages)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _key: str = PrivateAttr("")

    def _place(self, key: str) -> None:
        self._key = key
        for name, field in type(self).model_fields.items():
            value = BaseModel.__getattribute__(self, name)
            child = f"{key}.{field.alias or name}" if key else (field.alias or name)
            if isinstance(value, Section):
                value._place(child)
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, Section):
                        v._place(f"{child}.{k}")

    def __getattribute__(self, name: str) -> Any:
        value = BaseModel.__getattribute__(self, name)
        if _SEEN is None or name.startswith("_") or name not in type(self).model_fields:
            return value
        field = type(self).model_fields[name]
        key = self._dotted()
        path = f"{key}.{field.alias or name}" if key else (field.alias or name)
        if isinstance(value, dict):
            return _Reads(value, path)
        if not isinstance(value, Section):
            _SEEN.add(path)
        return value

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        if _SEEN is not None:
            _SEEN.add(self._dotted() or "*")
        return super().model_dump(**kwargs)

    def _dotted(self) -> str:
        # private attributes live in __pydantic_private__, beside the fields (plain attribute lookup misses them)
        return (object.__getattribute__(self, "__pydantic_private__") or {}).get("_key", "")


def _unique(values: list) -> list:
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"listed twice: {', '.join(dupes)}")
    return values


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


class Extract(Section):
    layers: Any
    batch_seconds: Positive
    shard_utterances: PositiveInt
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
    precision: Literal["auto", "bf16", "fp32"]

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        ok = v == "all" or (isinstance(v, list) and v and all(isinstance(x, int) and x >= 0 for x in v))
        if not ok:
            raise ValueError("must be 'all' or a non-empty list of layer numbers >= 0, e.g. [2, 3]")
        return v


class ProbeMonitor(Section):
    every: NonNegativeInt  # 0: off
    utterances: Annotated[int, Field(ge=4)]  # 3/4 fit, 1/4 score
    max_iter: PositiveInt


class Probe(Section):
    train_utterances: PositiveInt
    max_iter: PositiveInt
    pretrain: ProbeMonitor


class Finetune(Section):
    layer: Any
    dim: PositiveInt
    conv_blocks: NonNegativeInt
    conv_kernel: PositiveInt
    hidden: PositiveInt
    lstm_layers: NonNegativeInt  # 0: a convolutional head (conv_blocks) without the BiLSTM
    dropout: Annotated[float, Field(ge=0, lt=1)]
    frame_rate: Positive
    upsample: PositiveInt
    time_masks: NonNegativeInt
    time_mask_frames: NonNegativeInt
    feature_masks: NonNegativeInt
    feature_mask_fraction: Fraction
    batch_size: PositiveInt
    lr: Positive
    weight_decay: NonNegative
    warmup_steps: NonNegativeInt
    grad_clip: Positive
    max_steps: PositiveInt
    eval_every: PositiveInt
    patience: PositiveInt
    min_delta: NonNegative
    lr_decay: Annotated[float, Field(gt=0, le=1)]
    blank_exit: Fraction
    cmvn_utterances: PositiveInt
    num_threads: NonNegativeInt
    accelerator: Literal["auto", "cpu", "gpu", "cuda"]
    precision: Literal["auto", "bf16", "fp32"]

    @field_validator("layer")
    @classmethod
    def _layer(cls, v: Any) -> Any:
        if not (v == "weighted" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)):
            raise ValueError("must be 'weighted' or a layer number >= 0")
        return v


class DecoderSpec(Section):
    """A module of labelbudget/decoders and its options (any key beside `name`)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="after")
    def _known(self) -> DecoderSpec:
        names = modules_of("labelbudget.decoders")
        if self.name not in names:
            raise ValueError(f"name {self.name!r} is not a module of labelbudget/decoders ({', '.join(names)})")
        return self


class Evaluate(Section):
    decoder: DecoderSpec
    weights: Literal["words", "equal"] | dict[str, NonNegative]
    bootstrap: NonNegativeInt
    ci: Annotated[float, Field(gt=0, lt=1)]
    bootstrap_seed: int


class Report(Section):
    smaller: str | None  # None: the findings that need this role are skipped (e.g. one SSL size)
    larger: str | None
    baseline: str | None
    control: str | None
    wer_threshold: Positive
    f3_margin: NonNegative
    min_converged: Fraction


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


def modules_of(package: str) -> list[str]:
    """The modules of a registry package (labelbudget.upstreams, .decoders...), found without importing them
    (and torch): the one place extension points are discovered."""
    spec = importlib.util.find_spec(package)
    paths = list(spec.submodule_search_locations or []) if spec else []
    return sorted(m.name for m in pkgutil.iter_modules(paths) if m.name not in ("base", "__init__"))


def upstream_kinds() -> list[str]:
    return modules_of("labelbudget.upstreams")


def _message(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"])
    text = re.sub(r"^(Value error|Assertion failed), ", "", err["msg"])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key; allowed here: {', '.join(_known_keys(err['loc']))}"
    if err["type"] == "missing":
        return f"{key}: missing"
    shown = repr(err.get("input"))
    if not err["loc"] or err["type"] == "value_error" and (isinstance(err.get("input"), dict) or len(shown) > 60):
        return f"{key}: {text}" if key else text
    return f"{key} = {shown}: {text[:1].lower() + text[1:]}"


def parse_params(params: Any, where: str = "params") -> Params:
    """The typed params; ParamsError naming the first broken key, its value and what is allowed (and how many
    more)."""
    if not isinstance(params, dict):
        raise ParamsError(f"{where}: expected a mapping of sections, got {type(params).__name__}")
    try:
        parsed = Params.model_validate(params)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        first = _message(errors[0])
        more = f" (and {len(errors) - 1} more: {', '.join(_message(x) for x in errors[1:3])}"
        more += ", ..." if len(errors) > 3 else ""
        raise ParamsError(f"{where}: {first}{more + ')' if len(errors) > 1 else ''}") from None
    parsed._place("")
    return parsed


def is_labelbudget(params: Any) -> bool:
    """False for another pipeline driven by the same flows (the tests' toy project): not this schema."""
    return isinstance(params, dict) and bool(OWN_SECTIONS & set(params))


def check_params(params: Any, where: str = "params") -> None:
    """`parse_params` for a mapping that may belong to another pipeline (the flows drive any DVC project)."""
    if not isinstance(params, dict) or is_labelbudget(params):
        parse_params(params, where)


def _known_keys(loc: tuple) -> list[str]:
    """The keys the section holding `loc` allows (entries of `models` and `upstreams` are sections too)."""
    sections = {(): Params, ("models",): None, ("upstreams",): None}
    cls: type[BaseModel] | None = Params
    path: tuple = ()
    for part in loc[:-1]:
        path = (*path, part)
        if path[:1] in (("models",), ("upstreams",)) and len(path) == 2:
            cls = Model if path[0] == "models" else Upstream
            continue
        field = next((f for n, f in (cls.model_fields.items() if cls else []) if (f.alias or n) == part), None)
        cls = field.annotation if field and isinstance(field.annotation, type) else sections.get(path)
    return [f.alias or n for n, f in cls.model_fields.items()] if cls else []
