"""The downstream recipe's configuration (params `finetune`) and its input error."""

from __future__ import annotations

from dataclasses import dataclass, fields

from labelbudget.errors import LabelbudgetError


class DownstreamInputError(LabelbudgetError, ValueError):
    """Bad input found before any training starts (missing features, unknown layer, empty budget...)."""


@dataclass
class DownstreamConfig:
    layer: str | int = "weighted"  # "weighted": softmax-weighted sum of all kept layers; int: that layer only
    dim: int = 256  # width of the input projection and the conv blocks
    conv_blocks: int = 0  # depthwise-separable residual conv blocks after the projection (cheap on CPU)
    conv_kernel: int = 5
    hidden: int = 256  # BiLSTM units per direction
    lstm_layers: int = 1
    dropout: float = 0.2
    frame_rate: float = 25.0  # input frames are stacked down to about this rate
    upsample: int = 2  # CTC outputs per (stacked) frame
    time_masks: int = 2  # SpecAugment on features, at the stacked frame rate
    time_mask_frames: int = 6
    feature_masks: int = 2
    feature_mask_fraction: float = 0.1  # of the stacked feature width
    batch_size: int = 16
    lr: float = 4e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 5.0
    max_steps: int = 3000  # a generous maximum: runs are meant to stop by patience
    eval_every: int = 25  # steps between dev evaluations
    patience: int = 4  # dev evaluations without improvement, counted after the all-blank phase
    min_delta: float = 0.002  # dev CER must drop by at least this much to count as an improvement
    lr_decay: float = 0.5  # newbob: the rate is multiplied by this at every evaluation without improvement
    blank_exit: float = 0.3  # left the all-blank phase once dev output has this share of the reference chars
    cmvn_utterances: int = 400  # utterances of the budget used for the normalisation statistics
    num_threads: int = 0  # torch threads; 0: torch default
    accelerator: str = "auto"
    precision: str = "fp32"  # auto: bf16 autocast where the hardware has native bf16 (labelbudget.precision)

    @classmethod
    def from_params(cls, p: dict) -> DownstreamConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(p) - known)
        if unknown:
            raise DownstreamInputError(f"params finetune: unknown keys {unknown}; known: {sorted(known)}")
        cfg = cls(**p)
        if not (cfg.layer == "weighted" or isinstance(cfg.layer, int)):
            raise DownstreamInputError(f"params finetune.layer: {cfg.layer!r}; use 'weighted' or a layer")
        return cfg
