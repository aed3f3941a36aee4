"""The downstream model: per-layer CMVN, a learned weighted layer sum (SUPERB) or one layer, frames stacked
down to `frame_rate`, SpecAugment, Conv1d projection [+ conv blocks], BiLSTM, Linear, character CTC; greedy or
registered decoding; checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelbudget.decoders.greedy import GreedyDecoder
from labelbudget.decoding import Decoder
from labelbudget.downstream.data import FeatureDataset, sorted_batches
from labelbudget.io import atomic_path
from labelbudget.schema import Finetune
from labelbudget.text import VOCAB


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length; padding stays at the end."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    lens = lengths.to(x.device)[:, None]
    idx = torch.where(t < lens, lens - 1 - t, t)
    return x.gather(1, idx[..., None].expand_as(x))


class ConvBlock(nn.Module):
    """Residual depthwise-separable 1-D convolution: local context at a fraction of an LSTM's cost."""

    def __init__(self, channels: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(channels)  # per frame: padding never leaks into the statistics
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.pointwise = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(self.pointwise(F.gelu(self.depthwise(y))))


class BiLSTM(nn.Module):
    """Bidirectional LSTM on padded batches. Packed sequences are exact but ~3x slower on CPU; a plain
    bidirectional LSTM would start its backward pass in the padding. Reversing each sequence within its length
    keeps the padding at the end for both directions: exact, at the speed of the unpacked kernel."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.fwd = nn.LSTM(inputs, hidden, batch_first=True)
        self.bwd = nn.LSTM(inputs, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        f, _ = self.fwd(x)
        b, _ = self.bwd(reverse_padded(x, lengths))
        return torch.cat([f, reverse_padded(b, lengths)], dim=-1)


class DownstreamModel(nn.Module):
    def __init__(self, cfg: Finetune, num_layers: int, dim: int, input_rate: float,
                 vocab_size: int = len(VOCAB)):
        super().__init__()
        self.cfg = cfg
        self.num_layers, self.dim, self.input_rate = num_layers, dim, input_rate
        self.stack = max(1, round(input_rate / cfg.frame_rate))
        self.vocab_size = vocab_size
        # Zero logits: every layer starts with the same weight.
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.register_buffer("mean", torch.zeros(num_layers, dim))
        self.register_buffer("std", torch.ones(num_layers, dim))
        width = dim * self.stack
        self.proj = nn.Conv1d(width, cfg.dim, kernel_size=3, padding=1)
        self.convs = nn.ModuleList(ConvBlock(cfg.dim, cfg.conv_kernel, cfg.dropout)
                                   for _ in range(cfg.conv_blocks))
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.ModuleList(BiLSTM(cfg.dim if k == 0 else 2 * cfg.hidden, cfg.hidden)
                                  for k in range(cfg.lstm_layers))
        out_dim = 2 * cfg.hidden if cfg.lstm_layers else cfg.dim
        self.head = nn.Linear(out_dim, vocab_size * cfg.upsample)

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.copy_(torch.from_numpy(mean))
        self.std.copy_(torch.from_numpy(std))

    def spec_augment(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero (= the mean, after CMVN) random time spans and feature bands of each utterance."""
        c = self.cfg
        bsz, t, width = x.shape
        keep = torch.ones(bsz, t, width, dtype=torch.bool, device=x.device)
        frames = torch.arange(t, device=x.device)[None, :]
        for _ in range(c.time_masks):
            w = torch.randint(0, c.time_mask_frames + 1, (bsz, 1), device=x.device)
            start = (torch.rand(bsz, 1, device=x.device) * (lengths[:, None] - w).clamp(min=1)).long()
            keep &= ~((frames >= start) & (frames < start + w))[..., None]
        bins = torch.arange(width, device=x.device)[None, :]
        fw = max(1, int(c.feature_mask_fraction * width))
        for _ in range(c.feature_masks):
            w = torch.randint(0, fw + 1, (bsz, 1), device=x.device)
            start = (torch.rand(bsz, 1, device=x.device) * (width - w + 1)).long()
            keep &= ~((bins >= start) & (bins < start + w))[:, None, :]
        return x * keep

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (batch, frames, layers, dim) -> CTC log-probs (batch, out_frames, vocab), their lengths."""
        bsz, t = feats.shape[:2]
        # sum_l w_l (x_l - mean_l) / std_l, folded into one scale per (layer, dim) and one offset: two passes
        # over the (B, T, layers, dim) input instead of four, forward and backward
        scale = self.layer_weights()[:, None] / self.std
        x = (feats * scale).sum(dim=2) - (scale * self.mean).sum(0)  # (B, T, D)
        valid = torch.arange(t, device=x.device)[None, :] < lengths[:, None]
        x = x * valid[..., None]  # padding back to zero after the normalisation
        if self.stack > 1:
            pad = (-t) % self.stack
            x = F.pad(x, (0, 0, 0, pad)).reshape(bsz, (t + pad) // self.stack, self.dim * self.stack)
        lens = torch.div(lengths + self.stack - 1, self.stack, rounding_mode="floor")
        if self.training:
            x = self.spec_augment(x, lens)
        x = self.dropout(F.gelu(self.proj(x.transpose(1, 2))))  # (B, C, T')
        # Zero the padding before every convolution: an utterance decodes the same alone or in any batch.
        mask = (torch.arange(x.shape[-1], device=x.device)[None, :] < lens[:, None])[:, None, :]
        for conv in self.convs:
            x = conv(x * mask)
        x = x.transpose(1, 2)
        for lstm in self.lstm:
            x = self.dropout(lstm(x, lens))
        logits = self.head(x)  # (B, T', up * V)
        logits = logits.reshape(bsz, -1, self.vocab_size)
        return logits.float().log_softmax(dim=-1), lens * self.cfg.upsample  # CTC in fp32 under autocast


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> torch.Tensor:
    # zero_infinity: an utterance too fast for its frames gives no gradient instead of an inf loss
    return F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, blank=0,
                      reduction="mean", zero_infinity=True)


@torch.inference_mode()
def transcribe(model: DownstreamModel, dataset: FeatureDataset, decoder: Decoder | None = None,
               batch_size: int = 32) -> dict[str, str]:
    """Hypothesis per utterance id, decoded in length-sorted batches."""
    decoder = decoder or GreedyDecoder()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, str] = {}
    for idx in sorted_batches(dataset.lengths, batch_size):
        feats, lengths = dataset.padded(idx)
        log_probs, lens = model(feats.to(device), lengths.to(device))
        out.update(zip([dataset.ids[k] for k in idx], decoder.decode(log_probs, lens), strict=True))
    model.train(was_training)
    return out


def save_checkpoint(path: str | Path, model: DownstreamModel, meta: dict) -> None:
    meta = json.loads(json.dumps(meta))  # plain JSON data, whatever mapping types it came in: weights_only loads it
    payload = {"config": model.cfg.model_dump(), "num_layers": model.num_layers, "dim": model.dim,
               "input_rate": model.input_rate, "state_dict": model.state_dict(), "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> tuple[DownstreamModel, dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no downstream checkpoint; run the `finetune` stage")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    cfg = Finetune.model_validate(payload["config"])
    model = DownstreamModel(cfg, payload["num_layers"], payload["dim"], payload["input_rate"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload["meta"]
