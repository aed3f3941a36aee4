"""Shared pieces of the benchmarks: GEMM peak, model FLOPs, synthetic batches, parameter lookup."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def load_profile(name: str) -> dict:
    from labelbudget.profiles import compose_plain

    return compose_plain(REPO, name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 10) -> float:
    """Best FLOP/s of a square matrix product on this machine, measured now."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def encoder_flops(cfg, batch: int, in_frames: int, num_targets: int = 0, training: bool = True) -> float:
    """Model FLOPs of one (padded) batch: matmuls and convolutions, x3 for forward plus backward."""
    t2, t4 = (in_frames + 1) // 2, (in_frames + 3) // 4
    d, f = cfg.dim, cfg.dim * cfg.ff_mult
    macs = t2 * cfg.n_mels * cfg.conv_channels * 3 + t4 * cfg.conv_channels * d * 3  # front end
    macs += t4 * d * cfg.pos_kernel
    per_layer = t4 * (4 * d * d + 2 * d * f) + 2 * t4 * t4 * d  # projections, FFN, scores and weighted sum
    macs += cfg.layers * per_layer + t4 * d * num_targets
    return 2.0 * macs * batch * (3 if training else 1)


def synthetic_batch(seconds: float, batch_seconds: float, device: torch.device, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of `batch_seconds // seconds` speech-length noise waveforms (throughput does not depend on
    content)."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, int(batch_seconds // seconds))
    samples = int(seconds * 16000)
    return torch.randn(n, samples, generator=g).to(device) * 0.1, torch.full((n,), samples, device=device)
