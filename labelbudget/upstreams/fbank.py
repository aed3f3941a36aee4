"""Kind `fbank`: normalised log-mel filterbanks, the classic baseline (one hidden state, 100 frames/s)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from labelbudget.logmel import HOP, SAMPLE_RATE, LogMel, normalize
from labelbudget.upstreams.base import Upstream

if TYPE_CHECKING:
    from labelbudget.schema import Params
    from labelbudget.schema import Upstream as UpstreamSpec


class Fbank(Upstream):
    num_layers = 0
    frame_rate = SAMPLE_RATE / HOP

    def __init__(self, name: str, n_mels: int):
        self.name, self.dim = name, n_mels
        self.fingerprint = f"log-mel n_mels={n_mels}"
        self.logmel = LogMel(n_mels)

    def hidden_states(self, wavs: torch.Tensor, lengths: torch.Tensor, max_layer: int | None = None
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats, flens = self.logmel(wavs, lengths)
        return [normalize(feats, flens)], flens


def build(name: str, spec: UpstreamSpec, params: Params) -> Fbank:
    return Fbank(name, params.features.n_mels)
