"""The SSL encoder: strided Conv1d subsampling (4x), LayerNorm, convolutional positions, Transformer layers.

Readable top to bottom, in the spirit of nanoGPT's model file. `forward` returns every hidden state so that
extraction can keep intermediate layers, and stops at `max_layer` so it never computes what it will not keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from labelbudget.logmel import length_mask

if TYPE_CHECKING:
    from pathlib import Path

    from labelbudget.schema import Model, Params

FORMAT = "labelbudget-ssl/1"  # an exported encoder checkpoint (labelbudget.pretraining.export)
SUBSAMPLING = 4  # log-mel frames per encoder frame: two stride-2 convolutions (100 Hz -> 25 Hz)


def subsampled_lengths(lengths: torch.Tensor | int) -> torch.Tensor | int:
    """Frames after the two stride-2 convolutions (kernel 3, padding 1) of `Subsampling`."""
    for _ in range(2):
        lengths = (lengths - 1) // 2 + 1
    return lengths


@dataclass
class EncoderConfig:
    """The encoder's shape: params `models.<size>` and `features.n_mels` (its defaults live in conf/ only)."""

    layers: int
    dim: int
    heads: int
    ff_mult: int
    conv_channels: int
    n_mels: int
    dropout: float
    pos_kernel: int

    @classmethod
    def from_params(cls, model: Model, n_mels: int) -> EncoderConfig:
        return cls(n_mels=n_mels, **model.model_dump())

    def to_dict(self) -> dict:
        return asdict(self)


def write_shape(params: Params, size: str, path: Path) -> dict:
    """The shape of params `models.<size>` (and `features.n_mels`) as JSON at `path`: what the never-trained
    `random` upstream is built from (labelbudget.upstreams.random)."""
    from labelbudget.errors import ParamsError
    from labelbudget.io import write_json

    if size not in params.models:
        raise ParamsError(f"shape: no size {size!r} in params `models` ({', '.join(params.models)})")
    shape = {"size": size, **EncoderConfig.from_params(params.models[size], params.features.n_mels).to_dict()}
    write_json(path, shape)
    return shape


class Subsampling(nn.Module):
    """Two stride-2 Conv1d over time: 4x fewer frames at a fraction of a Conv2d front end's cost on CPU."""

    def __init__(self, n_mels: int, channels: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, channels, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(channels, dim, 3, stride=2, padding=1), nn.GELU(),
        )
        # Without a norm here, at initialisation the conv output is swamped by the positional signal.
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.transpose(1, 2)).transpose(1, 2))


class Encoder(nn.Module):
    subsampling = SUBSAMPLING

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.subsample = Subsampling(cfg.n_mels, cfg.conv_channels, cfg.dim)
        self.pos_conv = nn.Conv1d(cfg.dim, cfg.dim, cfg.pos_kernel, padding=cfg.pos_kernel // 2, groups=cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.dim * cfg.ff_mult, cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.layers)
        )
        self.final_norm = nn.LayerNorm(cfg.dim)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.subsample(feats)
        return x + torch.nn.functional.gelu(self.pos_conv(x.transpose(1, 2)).transpose(1, 2))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, max_layer: int | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """feats (B, T, n_mels) -> hidden states [embedding, layer 1, ..., layer max_layer], frame counts.

        Hidden states are pre-norm residual streams; the SSL head applies `final_norm` itself.
        """
        max_layer = self.cfg.layers if max_layer is None else max_layer
        out_lengths = subsampled_lengths(lengths)
        x = self.embed(feats)
        pad = ~length_mask(out_lengths, x.shape[1])
        hidden = [x]
        x = self.dropout(x)
        for layer in self.layers[:max_layer]:
            x = layer(x, src_key_padding_mask=pad) if self.training else inference_layer(layer, x, ~pad)
            hidden.append(x)
        return hidden, out_lengths


def inference_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`layer` in eval mode (pre-norm, GELU), with attention through `scaled_dot_product_attention`: the same
    numbers as the layer's own fast path, ~1.3x faster under CPU bf16 autocast (whose masked softmax is slow)."""
    b, t, d = x.shape
    heads = layer.self_attn.num_heads
    qkv = F.linear(layer.norm1(x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias)
    q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    att = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    x = x + layer.self_attn.out_proj(att.transpose(1, 2).reshape(b, t, d))
    return x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def size_report(models: Mapping[str, Model], names: list[str], n_mels: int) -> list[dict]:
    """Parameter count and memory estimate of each named size, instantiated on the meta device (no memory)."""
    rows = []
    for name in names:
        cfg = EncoderConfig.from_params(models[name], n_mels)
        with torch.device("meta"):
            n = count_parameters(Encoder(cfg))
        rows.append({"size": name, "layers": cfg.layers, "dim": cfg.dim, "parameters": n,
                     # AdamW training: fp32 weights + grads + two moments = 16 bytes per parameter
                     "train_state_gib": n * 16 / 2**30, "bf16_weights_gib": n * 2 / 2**30})
    return rows
