"""Log-mel filterbank front end with `torch.stft` (no torchaudio) and length-aware normalisation."""

from __future__ import annotations

import torch
from torch import nn

SAMPLE_RATE = 16000
HOP = 160  # 10 ms: 100 frames per second
WIN = 400  # 25 ms


def mel_filterbank(n_mels: int, n_fft: int, sr: int = SAMPLE_RATE, fmin: float = 20.0, fmax: float | None = None
                   ) -> torch.Tensor:
    """HTK-style triangular filters, shape (n_fft // 2 + 1, n_mels)."""
    fmax = fmax or sr / 2

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    mels = torch.linspace(hz_to_mel(torch.tensor(fmin)), hz_to_mel(torch.tensor(fmax)), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = torch.linspace(0, sr / 2, n_fft // 2 + 1)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (bins[None] - lower) / (center - lower)
    down = (upper - bins[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).T.contiguous()


class LogMel(nn.Module):
    """Waveforms (B, samples) -> log-mel (B, frames, n_mels) and frame counts."""

    def __init__(self, n_mels: int = 80, n_fft: int = 512):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(WIN), persistent=False)
        self.register_buffer("fbank", mel_filterbank(n_mels, n_fft), persistent=False)

    @staticmethod
    def frames(num_samples: torch.Tensor | int) -> torch.Tensor | int:
        return num_samples // HOP + 1

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(wav.device.type, enabled=False):  # STFT and log need fp32
            spec = torch.stft(wav.float(), self.n_fft, HOP, WIN, self.window, center=True, return_complex=True)
            power = spec.real.square() + spec.imag.square()
            mel = torch.log(power.transpose(1, 2) @ self.fbank + 1e-6)
        return mel, self.frames(lengths)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]


def normalize(feats: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance, per-channel mean/variance normalisation over valid frames only (padding excluded);
    padded frames are set to zero."""
    mask = length_mask(lengths, feats.shape[1]).unsqueeze(-1).to(feats.dtype)
    n = mask.sum(1, keepdim=True).clamp(min=1)
    mean = (feats * mask).sum(1, keepdim=True) / n
    var = ((feats - mean).square() * mask).sum(1, keepdim=True) / n
    return (feats - mean) / torch.sqrt(var + eps) * mask
