"""The sections of the measurement: features kept, the phone probe, the downstream, its decoding and scoring,
and the report's findings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from labelbudget.schema.base import (
    Fraction,
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Section,
    modules_of,
)


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
