"""Length-bucketed batches bounded by total audio seconds, as a pure function of the step index.

Batch k of a run depends only on (seed, k), so a run resumed at step k sees exactly the batches an
uninterrupted run would have seen, and each DDP rank takes its own slice of every global step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from labelbudget import audio


def bucket_batches(durations: list[float], max_seconds: float) -> list[list[int]]:
    """Sort by duration and cut into batches whose padded size (longest x count) fits `max_seconds`."""
    order = np.argsort(durations, kind="stable")
    batches, cur, longest = [], [], 0.0
    for i in order:
        d = durations[i]
        if cur and max(longest, d) * (len(cur) + 1) > max_seconds:
            batches.append(cur)
            cur, longest = [], 0.0
        cur.append(int(i))
        longest = max(longest, d)
    if cur:
        batches.append(cur)
    return batches


def padding_share(batch: list[int], durations: list[float]) -> float:
    d = [durations[i] for i in batch]
    return 1.0 - sum(d) / (max(d) * len(d))


class StepBatchSampler(Sampler[list[int]]):
    """Yields batches for global steps start..total-1; epoch e uses the bucket order shuffled with (seed, e)."""

    def __init__(self, durations: list[float], max_seconds: float, total_steps: int, seed: int,
                 start_step: Callable[[], int] = lambda: 0, rank: int = 0, world_size: int = 1):
        self.batches = bucket_batches(durations, max_seconds)
        self.total_steps, self.seed, self.start_step = total_steps, seed, start_step
        self.rank, self.world_size = rank, world_size
        if len(self.batches) < world_size:
            raise ValueError(f"only {len(self.batches)} batches for {world_size} processes: lower batch_seconds")

    def batch_at(self, step: int) -> list[int]:
        per_epoch = len(self.batches) // self.world_size
        epoch, pos = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))
        return self.batches[order[pos * self.world_size + self.rank]]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step(), self.total_steps):
            yield self.batch_at(step)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step())


class WaveDataset(Dataset):
    """Utterances of one manifest as 16 kHz float32 waveforms."""

    def __init__(self, paths: list[str], durations: list[float]):
        self.paths, self.durations = paths, durations

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_wave(self.paths[i])


def load_wave(path: str) -> torch.Tensor:
    """One file as a 16 kHz float32 mono waveform."""
    wav, sr = audio.load(path, mono=True)
    return torch.from_numpy(audio.resample(wav, sr))


def collate_waves(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in items])
    out = torch.zeros(len(items), int(lengths.max()))
    for i, w in enumerate(items):
        out[i, : len(w)] = w
    return out, lengths
