"""Kind `random`: an encoder of a params `models` size that was never pre-trained, seeded with params `seed`.
The control that shows whether pretraining adds anything beyond the architecture. Its `source` is the shape
file the `shape@<size>` stage writes, so its features depend on that size's shape and nothing else:

    random: {kind: random, size: large, source: models/shape/large.json}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from labelbudget.encoder import Encoder, EncoderConfig
from labelbudget.io import read_json
from labelbudget.upstreams.base import UpstreamError
from labelbudget.upstreams.ssl import EncoderUpstream

if TYPE_CHECKING:
    from labelbudget.schema import Params
    from labelbudget.schema import Upstream as UpstreamSpec


def build(name: str, spec: UpstreamSpec, params: Params) -> EncoderUpstream:
    size, path = spec.size, Path(spec.source)
    if not path.is_file():
        raise UpstreamError(f"upstreams.{name}.source {spec.source!r}: no shape file; the stage shape@{size} "
                            f"writes models/shape/{size}.json")
    shape = read_json(path)
    if shape.get("size") != size:
        raise UpstreamError(f"upstreams.{name}.source {spec.source!r} is the shape of size {shape.get('size')!r}, "
                            f"not of its size {size!r}")
    cfg = EncoderConfig(**{k: v for k, v in shape.items() if k != "size"})
    torch.manual_seed(params.seed)
    return EncoderUpstream(name, Encoder(cfg), f"random-init {size} seed={params.seed}")
