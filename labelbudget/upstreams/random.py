"""Kind `random`: an encoder of a params `models` size that was never pre-trained, seeded with params `seed`.
The control that shows whether pretraining adds anything beyond the architecture.

    random: {kind: random, size: large, source: labelbudget/encoder.py}
"""

from __future__ import annotations

from typing import Any

import torch

from labelbudget.encoder import Encoder, EncoderConfig
from labelbudget.upstreams.base import UpstreamError
from labelbudget.upstreams.ssl import EncoderUpstream


def build(name: str, spec: dict[str, Any], params: dict[str, Any]) -> EncoderUpstream:
    size = spec.get("size")
    if size not in params.get("models", {}):
        raise UpstreamError(f"params upstreams.{name}.size: {size!r} is not a size in params `models` "
                            f"({', '.join(params.get('models', {}))})")
    cfg = EncoderConfig.from_params(params["models"][size], params["features"]["n_mels"])
    torch.manual_seed(int(params["seed"]))
    return EncoderUpstream(name, Encoder(cfg), f"random-init {size} seed={params['seed']}")
