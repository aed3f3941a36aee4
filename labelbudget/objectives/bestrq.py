"""Objective `bestrq` (BEST-RQ): targets from a frozen random-projection quantizer of stacked log-mel frames,
which needs no data."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from labelbudget.ssl import STACK

if TYPE_CHECKING:
    from labelbudget.encoder import EncoderConfig
    from labelbudget.manifest import Corpus
    from labelbudget.schema import Pretrain


class RandomProjectionQuantizer(nn.Module):
    """BEST-RQ: frozen random projection onto a frozen L2-normalised random codebook; nearest code = target."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        proj = torch.empty(input_dim, codebook_dim)
        nn.init.xavier_uniform_(proj, generator=g)
        self.register_buffer("projection", proj)
        self.register_buffer("codebook", F.normalize(torch.randn(codebook_size, codebook_dim, generator=g), dim=-1))

    @property
    def num_targets(self) -> int:
        return self.codebook.shape[0]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(x.float() @ self.projection, dim=-1)
        return (z @ self.codebook.T).argmax(-1)  # max cosine = min L2 distance between unit vectors


def targets(rows: list[dict], corpus: Corpus | None, p: Pretrain, cfg: EncoderConfig,
            seed: int) -> RandomProjectionQuantizer:
    """BEST-RQ: a frozen random-projection quantizer of stacked log-mel frames (needs no data)."""
    return RandomProjectionQuantizer(STACK * cfg.n_mels, p.codebook_size, p.codebook_dim, seed)
