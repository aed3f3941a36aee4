"""Greedy CTC decoding: the best label per frame, then the CTC collapse. Options: none."""

from __future__ import annotations

import torch

from labelbudget.decoding import collapse
from labelbudget.text import VOCAB, normalize


class GreedyDecoder:
    """Best label per frame, then the CTC collapse."""

    def __init__(self, vocab: list[str] = VOCAB):
        self.vocab = vocab

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        best = log_probs.argmax(dim=-1).cpu()
        texts = []
        for row, n in zip(best.tolist(), lengths.tolist(), strict=True):
            chars = "".join(self.vocab[i] for i in collapse(row[: int(n)]))
            # The same normaliser as the references: squeezes the spaces a CTC model likes to repeat.
            texts.append(normalize(chars))
        return texts


def build() -> GreedyDecoder:
    return GreedyDecoder()
