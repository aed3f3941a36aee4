"""Objective `phones`, the calibration topline: each frame's true phone from the corpus' espeak alignments.
Supervised, not SSL: it shows what the measurement can see, and is never counted in the findings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from labelbudget import phones
from labelbudget.encoder import SUBSAMPLING, subsampled_lengths
from labelbudget.errors import LabelbudgetError
from labelbudget.logmel import HOP, SAMPLE_RATE, LogMel

if TYPE_CHECKING:
    from labelbudget.encoder import EncoderConfig
    from labelbudget.manifest import Corpus
    from labelbudget.schema import Pretrain


class PhoneTargets(nn.Module):
    """The topline's targets: each encoder frame's phone class from the corpus' alignments (labelbudget.phones),
    -1 where an utterance has none. Supervised: a calibration of the measurement, never an SSL result."""

    per_utterance = True  # targets come with each utterance (the batches carry them), not from its log-mel

    def __init__(self, classes: list[str], segments: dict[str, phones.Segments] | None = None):
        super().__init__()
        self.classes, self.segments = list(classes), segments or {}
        self.index = {c: k for k, c in enumerate(self.classes)}

    @property
    def num_targets(self) -> int:
        return len(self.classes)

    def labels(self, uid: str, num_samples: int) -> torch.Tensor:
        """(encoder frames,) class ids of one utterance of `num_samples` 16 kHz samples."""
        n = int(subsampled_lengths(LogMel.frames(num_samples)))
        names = phones.frame_labels(self.segments.get(uid, []), n, SAMPLE_RATE / HOP / SUBSAMPLING)
        return torch.tensor([self.index.get(c, -1) for c in names], dtype=torch.long)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        return F.pad(labels, (0, max(0, t - labels.shape[1])), value=-1)[:, :t]


class MissingAlignmentsError(LabelbudgetError, ValueError):
    """The `phones` objective on a corpus without phone alignments of its unlabeled pool."""


def targets(rows: list[dict], corpus: Corpus, p: Pretrain, cfg: EncoderConfig, seed: int) -> PhoneTargets:
    """The topline: the unlabeled pool's espeak alignments; classes as the probe names them (stress dropped)."""
    segments = phones.read_part(corpus.dir, corpus.unlabeled)
    if segments is None:
        raise MissingAlignmentsError(
            f"objective phones (the topline) needs phone alignments of the unlabeled pool; corpus {corpus.dir} "
            f"(source {corpus.source!r}) has none: drop it, --set 'toplines={{}}' '~upstreams.topline'")
    classes = sorted({phones.phone_class(seg[0]) for r in rows for seg in segments.get(r["id"], [])}
                     | {phones.SIL})
    return PhoneTargets(classes, {r["id"]: segments.get(r["id"], []) for r in rows})
