"""Cached features as training data: per-utterance items, length-bucketed batches, batches cut from
one in-memory block, per-layer normalisation statistics."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from labelbudget.featstore import FeatureStore
from labelbudget.text import encode


class FeatureDataset(torch.utils.data.Dataset):
    """(features, target) pairs of a list of utterances; features float32 (frames, layers, dim).

    `in_memory`: read every utterance once into one float16 block (a training run visits each utterance
    hundreds of times; memmap reads, page faults and per-item copies then cost more than the model)."""

    def __init__(self, store: FeatureStore, ids: Sequence[str], texts: dict[str, str] | None = None,
                 layer: int | None = None, in_memory: bool = False):
        self.store, self.ids, self.texts, self.layer = store, list(ids), texts, layer
        self.lengths = [int(store[i].shape[0]) for i in self.ids]  # memmap slices: no data read
        self._block: np.ndarray | None = None
        if in_memory and self.ids:
            self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
            self._block = np.concatenate([self._read(uid) for uid in self.ids])

    def _read(self, uid: str) -> np.ndarray:
        x = self.store[uid]
        return x if self.layer is None else x[:, self.layer : self.layer + 1]

    def __len__(self) -> int:
        return len(self.ids)

    def _features(self, k: int) -> np.ndarray:
        """Item `k`'s features as stored (float16), a view of the block or the memory map: no copy yet."""
        if self._block is not None:
            return self._block[self.offsets[k] : self.offsets[k] + self.lengths[k]]
        return self._read(self.ids[k])

    def __getitem__(self, k: int) -> dict:
        uid = self.ids[k]
        item = {"id": uid, "feats": torch.from_numpy(np.asarray(self._features(k), dtype=np.float32))}
        if self.texts is not None:
            item["target"] = torch.tensor(encode(self.texts[uid]), dtype=torch.long)
        return item

    def padded(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (batch, frames, layers, dim) zero-padded, lengths) of items `idx`, in the stored dtype
        (float16): one copy per utterance, no float32 copy of each item and of the batch; the model's first op
        promotes float16 exactly, so it decodes as from `collate`. Decoding (dev CER, test sets) batches here."""
        parts = [self._features(k) for k in idx]
        lens = [len(x) for x in parts]
        out = np.zeros((len(idx), max(lens), *parts[0].shape[1:]), dtype=parts[0].dtype)
        for j, x in enumerate(parts):
            out[j, : len(x)] = x
        return torch.from_numpy(out), torch.tensor(lens)


def collate(items: list[dict]) -> dict:
    lengths = torch.tensor([it["feats"].shape[0] for it in items])
    feats = torch.nn.utils.rnn.pad_sequence([it["feats"] for it in items], batch_first=True)
    batch = {"ids": [it["id"] for it in items], "feats": feats, "lengths": lengths}
    if "target" in items[0]:
        batch["targets"] = torch.cat([it["target"] for it in items])
        batch["target_lengths"] = torch.tensor([len(it["target"]) for it in items])
    return batch


class BucketBatchSampler(torch.utils.data.Sampler):
    """Random batches of similar length (less padding): shuffle, sort within pools of `pool` batches, shuffle
    the batches. A fresh order every epoch from one seeded generator."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, pool: int = 8):
        self.lengths, self.batch_size, self.pool = list(lengths), batch_size, pool
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rng.permutation(len(self.lengths))
        batches = []
        span = self.batch_size * self.pool
        for s in range(0, len(order), span):
            chunk = sorted(order[s : s + span].tolist(), key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for b in self.rng.permutation(len(batches)):
            yield batches[b]

    def __len__(self) -> int:
        span = self.batch_size * self.pool
        full, rest = divmod(len(self.lengths), span)
        return full * self.pool + math.ceil(rest / self.batch_size)


class BlockBatches:
    """Training batches cut by index from an in-memory feature block (`FeatureDataset(in_memory=True)`):
    the same batches as `DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)`, without per-item
    copies. On a GPU the block is moved there once when it fits, so no batch crosses the bus."""

    def __init__(self, dataset: FeatureDataset, sampler: BucketBatchSampler, device: torch.device):
        if dataset._block is None or dataset.texts is None:
            raise ValueError("BlockBatches needs a labeled FeatureDataset built with in_memory=True")
        block = torch.from_numpy(dataset._block)
        if device.type == "cuda" and block.nbytes > 0.5 * torch.cuda.mem_get_info(device)[0]:
            device = torch.device("cpu")  # does not fit: batches are cut on the host, moved by Lightning
        self.block, self.device, self.sampler = block.to(device), device, sampler
        self.offsets, self.lengths, self.ids = dataset.offsets, dataset.lengths, dataset.ids
        self.targets = [torch.tensor(encode(dataset.texts[i]), dtype=torch.long) for i in dataset.ids]

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        # A DataLoader draws one number from torch's global generator per epoch (its workers' base seed):
        # drawing it here too keeps dropout and SpecAugment, so the trained model, identical on both paths.
        torch.empty((), dtype=torch.int64).random_()
        for idx in self.sampler:
            lens = torch.tensor([self.lengths[i] for i in idx])
            t = torch.arange(int(lens.max()))
            valid = t[None, :] < lens[:, None]
            rows = torch.where(valid, torch.as_tensor(self.offsets[idx])[:, None] + t[None, :], 0)
            rows = rows.to(self.device)
            # float16 as stored: the model's first op promotes it, and zeroes the padding after the layer sum
            feats = self.block[rows]
            targets = [self.targets[i] for i in idx]
            yield {"ids": [self.ids[i] for i in idx], "feats": feats, "lengths": lens.to(self.device),
                   "targets": torch.cat(targets).to(self.device),
                   "target_lengths": torch.tensor([len(x) for x in targets], device=self.device)}


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic length-sorted batches for evaluation."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def feature_stats(dataset: FeatureDataset, max_utterances: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per (layer, dim) over the frames of the first utterances of the training set: every
    upstream (log-mel, SSL layers of any scale) enters the downstream at unit scale."""
    s = s2 = None
    n = 0
    for k in range(min(len(dataset), max_utterances)):
        x = dataset[k]["feats"].double().numpy()
        s = x.sum(0) if s is None else s + x.sum(0)
        s2 = (x**2).sum(0) if s2 is None else s2 + (x**2).sum(0)
        n += x.shape[0]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-10))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)
