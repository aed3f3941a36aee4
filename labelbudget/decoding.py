"""CTC decoding: turning per-frame log-probabilities into normalised transcripts.

Every decoder implements `Decoder.decode(log_probs, lengths) -> list[str]`. A decoder is one module of
labelbudget/decoders with a `build(**options)` function; params name it with its options, e.g.
`evaluate.decoder: {name: greedy}` (a beam search or an n-gram LM decoder such as pyctcdecode would take
`beam_width`, `lm_path`...). The schema checks the name against the modules before anything runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from labelbudget.schema import DecoderSpec

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


def make_decoder(spec: DecoderSpec) -> Decoder:
    """The decoder params `evaluate.decoder` names (a module of labelbudget/decoders), built with its options."""
    import importlib

    module = importlib.import_module(f"labelbudget.decoders.{spec.name}")
    return module.build(**(spec.model_extra or {}))
