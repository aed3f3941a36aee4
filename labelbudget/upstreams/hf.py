"""Kind `hf`: a pretrained wav2vec 2.0 / HuBERT / WavLM checkpoint through `transformers` (optional extra:
`pip install -e '.[hf]'`), from a local folder or a hub id.

    wavlm_base: {kind: hf, model: models/hf/wavlm-base, source: models/hf/wavlm-base}

`model` is what `from_pretrained` takes (default: `source`); `source` is the folder DVC tracks. Nothing is
downloaded at run time unless `model` is a hub id and the machine can reach the hub. Options: `normalize`
(zero-mean unit-variance waveforms, as the model's feature extractor does; default: read from its
preprocessor_config.json, else true), `revision` for a hub id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from labelbudget.logmel import SAMPLE_RATE
from labelbudget.schema import Section
from labelbudget.upstreams.base import Upstream, UpstreamError

if TYPE_CHECKING:
    from labelbudget.schema import Params
    from labelbudget.schema import Upstream as UpstreamSpec


class HuggingFaceUpstream(Upstream):
    def __init__(self, name: str, model: torch.nn.Module, fingerprint: str, normalize: bool):
        self.name, self.model, self.fingerprint, self.normalize = name, model.eval(), fingerprint, normalize
        cfg = model.config
        self.dim, self.num_layers = int(cfg.hidden_size), int(cfg.num_hidden_layers)
        stride = 1
        for s in cfg.conv_stride:
            stride *= int(s)
        self.frame_rate = SAMPLE_RATE / stride
        # Models whose front end uses group norm were trained without attention masks: padding is fed as is
        # (length-sorted batches keep it small), as transformers' own documentation advises.
        self.use_mask = getattr(cfg, "feat_extract_norm", "layer") == "layer"

    def hidden_states(self, wavs: torch.Tensor, lengths: torch.Tensor, max_layer: int | None = None
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
        mask = torch.arange(wavs.shape[1], device=wavs.device)[None] < lengths[:, None]
        x = wavs.float()
        if self.normalize:
            n = lengths[:, None].clamp(min=1)
            mean = (x * mask).sum(1, keepdim=True) / n
            var = ((x - mean).square() * mask).sum(1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7) * mask
        out = self.model(x, attention_mask=mask.long() if self.use_mask else None, output_hidden_states=True)
        frames = self.model._get_feat_extract_output_lengths(lengths)
        hidden = list(out.hidden_states)
        return hidden[: (self.num_layers if max_layer is None else max_layer) + 1], frames


def fingerprint_of(model: str, revision: str | None) -> str:
    """sha256 over a local folder's weight and config files, else the hub id and revision."""
    folder = Path(model)
    if not folder.is_dir():
        return f"hf:{model}@{revision or 'main'}"
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin"):
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()


class Options(Section):
    """What kind `hf` takes beside `kind` and `source` (None: not given)."""

    model: str | None = None
    normalize: bool | None = None
    revision: str | None = None


def build(name: str, spec: UpstreamSpec, params: Params) -> HuggingFaceUpstream:
    try:
        from transformers import AutoModel
    except ImportError:
        raise UpstreamError(f"upstream {name!r} is of kind hf, which needs transformers: "
                            "pip install -e '.[hf]'") from None
    opts = Options.model_validate(spec.model_extra or {})
    model = opts.model or spec.source
    if not model:
        raise UpstreamError(f"params upstreams.{name}: kind hf needs `model` (a folder or a hub id)")
    normalize = opts.normalize
    if normalize is None:
        pre = Path(model) / "preprocessor_config.json"
        normalize = json.loads(pre.read_text()).get("do_normalize", True) if pre.exists() else True
    try:
        net = AutoModel.from_pretrained(model, revision=opts.revision)
    except (OSError, ValueError) as e:
        raise UpstreamError(f"params upstreams.{name}: cannot load {model!r} with transformers: {e}") from None
    if not hasattr(net, "_get_feat_extract_output_lengths"):
        raise UpstreamError(f"params upstreams.{name}: {type(net).__name__} is not a speech encoder of the "
                            "wav2vec 2.0 family (wav2vec2, HuBERT, WavLM, data2vec-audio)")
    return HuggingFaceUpstream(name, net, fingerprint_of(model, opts.revision), bool(normalize))
