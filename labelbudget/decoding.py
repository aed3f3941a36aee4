"""CTC decoding: turning per-frame log-probabilities into normalised transcripts.

Every decoder implements `Decoder.decode(log_probs, lengths) -> list[str]`; `make_decoder` picks one by
the name in params (`evaluate.decoder`). Greedy is the only one built in; a beam search or an n-gram LM
decoder (for example pyctcdecode) plugs in by registering a factory in `DECODERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from labelbudget.text import VOCAB, normalize

BLANK_ID = 0


class Decoder(Protocol):
    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """log_probs: (batch, frames, vocab); lengths: (batch,) valid frames. Returns normalised text."""
        ...


def collapse(ids: list[int], blank: int = BLANK_ID) -> list[int]:
    """The CTC collapse: merge repeated labels, then drop blanks."""
    out, prev = [], None
    for i in ids:
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


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


DECODERS: dict[str, Callable[..., Decoder]] = {"greedy": GreedyDecoder}


def make_decoder(name: str = "greedy", **options) -> Decoder:
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; available: {', '.join(sorted(DECODERS))}")
    return DECODERS[name](**options)
