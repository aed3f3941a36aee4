"""Kind `random`: an encoder of a params `models` size that was never pre-trained, seeded with params `seed`.
The control that shows whether pretraining adds anything beyond the architecture.

    random: {kind: random, size: large, source: labelbudget/encoder.py}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from labelbudget.encoder import Encoder, EncoderConfig
from labelbudget.upstreams.base import UpstreamError
from labelbudget.upstreams.ssl import EncoderUpstream

if TYPE_CHECKING:
    from labelbudget.schema import Params
    from labelbudget.schema import Upstream as UpstreamSpec


def build(name: str, spec: UpstreamSpec, params: Params) -> EncoderUpstream:
    size = spec.size
    if size not in params.models:
        raise UpstreamError(f"params upstreams.{name}.size: {size!r} is not a size in params `models` "
                            f"({', '.join(params.models)})")
    cfg = EncoderConfig.from_params(params.models[size], params.features.n_mels)
    torch.manual_seed(params.seed)
    return EncoderUpstream(name, Encoder(cfg), f"random-init {size} seed={params.seed}")
