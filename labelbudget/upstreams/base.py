"""The `Upstream` interface and the loader that turns a params entry into one."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from labelbudget.errors import LabelbudgetError

if TYPE_CHECKING:
    from labelbudget.schema import Params
    from labelbudget.schema import Upstream as UpstreamSpec


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
    from labelbudget.schema import upstream_kinds

    return upstream_kinds()


def spec_of(name: str, params: Params) -> UpstreamSpec:
    if name not in params.upstreams:
        have = ", ".join(params.upstreams) or "none"
        raise UpstreamError(f"unknown upstream {name!r}: params `upstreams` has {have}")
    return params.upstreams[name]


def load(name: str, params: Params) -> Upstream:
    """The upstream that params `upstreams.<name>` describes, in eval mode on the CPU."""
    spec = spec_of(name, params)
    kind = spec.kind
    if kind not in available_kinds():
        raise UpstreamError(f"params upstreams.{name}.kind: unknown kind {kind!r}; "
                            f"available: {', '.join(available_kinds())}")
    module = importlib.import_module(f"labelbudget.upstreams.{kind}")
    return module.build(name, spec, params)


def missing_sources(root: Path, params: Params) -> list[str]:
    """Upstream `source` files that neither exist under `root` nor come from a stage (the pretrain and topline
    stages write models/pretrain/<name>/, the shape stage models/shape/<size>.json): each would stop its extract
    stage after the run started."""
    produced = [*(f"models/pretrain/{n}/" for n in [*params.ssl_sizes, *params.toplines]),
                *(f"models/shape/{size}.json" for size in params.models)]
    out = []
    for name, spec in params.upstreams.items():
        source = spec.source
        if source and not (root / source).exists() and not any(source.startswith(p) for p in produced):
            out.append(f"upstreams.{name}.source {source!r}")
    return out


def check_sources(root: Path, params: Params) -> None:
    missing = missing_sources(root, params)
    if missing:
        raise UpstreamError(f"{', '.join(missing)}: not found under {root} and no stage writes it; point it at "
                            "an existing file or folder (models/pretrain/<size>/model.pt is the pretrain stage's)")


def check_project(root: Path) -> None:
    """Before a run: params.yaml against the schema and the upstream sources it names (a file no stage writes
    would stop its extract stage after the run started). The flows drive any DVC project (the tests' toy one):
    only this pipeline's params are checked."""
    import yaml

    from labelbudget.config import PARAMS, load_params
    from labelbudget.schema import is_labelbudget

    path = root / PARAMS
    try:
        foreign = path.exists() and not is_labelbudget(yaml.safe_load(path.read_text()))
    except yaml.YAMLError:
        foreign = False  # load_params names what is wrong
    if not foreign:
        check_sources(root, load_params(path))
