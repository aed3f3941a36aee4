"""The `Upstream` interface and the loader that turns a params entry into one."""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from labelbudget.errors import LabelbudgetError


class UpstreamError(LabelbudgetError, ValueError):
    """An upstream that cannot be built: unknown kind, missing option, unusable checkpoint."""


class Upstream(ABC):
    """Waveforms in, hidden states out.

    `hidden_states(wavs, lengths)` returns `num_layers + 1` tensors of shape (batch, frames, dim): index 0 is
    the input embedding (log-mel for fbank, the convolutional front end for encoders), index i the output of
    layer i; and the number of valid frames per utterance. `fingerprint` identifies the weights (a checkpoint's
    sha256, or how a checkpoint-free upstream is made) and is stored beside the features.
    """

    name: str
    fingerprint: str
    frame_rate: float  # hidden-state frames per second
    dim: int
    num_layers: int

    @abstractmethod
    def hidden_states(self, wavs: torch.Tensor, lengths: torch.Tensor, max_layer: int | None = None
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(B, samples) 16 kHz waveforms and their lengths -> hidden states 0..max_layer, frames per utterance."""

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> Upstream:
        """Move to `device`. `dtype` (inference only): weights in that dtype where a kind supports it (an
        encoder's Transformer, see `EncoderUpstream`); the others ignore it and rely on autocast."""
        for module in vars(self).values():
            if isinstance(module, torch.nn.Module):
                module.to(device)
        return self


def available_kinds() -> list[str]:
    import labelbudget.upstreams as package

    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name != "base")


def spec_of(name: str, params: dict[str, Any]) -> dict[str, Any]:
    upstreams = params.get("upstreams") or {}
    if name not in upstreams:
        raise UpstreamError(f"unknown upstream {name!r}: params `upstreams` has {', '.join(upstreams) or 'none'}")
    spec = upstreams[name]
    if not isinstance(spec, dict) or "kind" not in spec:
        raise UpstreamError(f"params upstreams.{name} must be a mapping with a `kind` "
                            f"({', '.join(available_kinds())}), not {spec!r}")
    return spec


def load(name: str, params: dict[str, Any]) -> Upstream:
    """The upstream that params `upstreams.<name>` describes, in eval mode on the CPU."""
    spec = spec_of(name, params)
    kind = spec["kind"]
    if kind not in available_kinds():
        raise UpstreamError(f"params upstreams.{name}.kind: unknown kind {kind!r}; "
                            f"available: {', '.join(available_kinds())}")
    module = importlib.import_module(f"labelbudget.upstreams.{kind}")
    return module.build(name, spec, params)


def missing_sources(root: Path, params: dict) -> list[str]:
    """Upstream `source` files that neither exist under `root` nor come from a stage (the pretrain and topline
    stages write models/pretrain/<name>/): each would stop its extract stage after the run started."""
    produced = [f"models/pretrain/{n}/" for n in [*params.get("ssl_sizes", []), *(params.get("toplines") or {})]]
    out = []
    for name, spec in params.get("upstreams", {}).items():
        source = str(spec.get("source") or "")
        if source and not (root / source).exists() and not any(source.startswith(p) for p in produced):
            out.append(f"upstreams.{name}.source {source!r}")
    return out


def check_sources(root: Path, params: dict) -> None:
    missing = missing_sources(root, params)
    if missing:
        raise UpstreamError(f"{', '.join(missing)}: not found under {root} and no stage writes it; point it at "
                            "an existing file or folder (models/pretrain/<size>/model.pt is the pretrain stage's)")
