"""Cached features on disk: per upstream and part, float16 shards plus an index, read by memory map.

Layout of one part (`data/features/<upstream>/<part>/`):
  meta.json                 upstream, checkpoint sha256, layers kept, dim, frame rate, shard plan
  shard-00000.npy           float16 array (frames, layers, dim): utterances concatenated along frames
  shard-00000.json          {"ids": [...], "offsets": [...], "lengths": [...], "sha256": <of the .npy>}
A shard counts as done only when its .json exists and the .npy matches the recorded hash: a shard left
half-written by a crash is redone, never silently reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelbudget.errors import LabelbudgetError
from labelbudget.io import atomic_path, read_json, write_json


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class FeatureStoreError(LabelbudgetError, RuntimeError):
    pass


@dataclass
class ShardWriter:
    dir: Path
    index: int

    @property
    def npy(self) -> Path:
        return self.dir / f"shard-{self.index:05d}.npy"

    @property
    def meta(self) -> Path:
        return self.dir / f"shard-{self.index:05d}.json"

    def is_done(self, ids: list[str]) -> bool:
        if not (self.meta.exists() and self.npy.exists()):
            return False
        try:
            m = read_json(self.meta)
        except ValueError:
            return False
        return m.get("ids") == ids and m.get("sha256") == sha256_file(self.npy)

    def write(self, ids: list[str], feats: list[np.ndarray]) -> None:
        lengths = [int(f.shape[0]) for f in feats]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
        arr = np.concatenate(feats, axis=0).astype(np.float16)
        with atomic_path(self.npy) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
        write_json(self.meta, {"ids": ids, "offsets": offsets, "lengths": lengths,
                               "sha256": sha256_file(self.npy)})


class FeatureStore:
    """Read-only view of one part's features: `store[id]` -> float16 array (frames, layers, dim)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            raise FeatureStoreError(f"{self.dir}: no features (meta.json missing); run the `extract` stage")
        self.meta = read_json(meta_path)
        self._where: dict[str, tuple[int, int, int]] = {}
        self._arrays: dict[int, np.ndarray] = {}
        for k in range(self.meta["num_shards"]):
            sm = self.dir / f"shard-{k:05d}.json"
            if not sm.exists():
                raise FeatureStoreError(f"{sm}: shard index missing; the extraction did not finish")
            m = read_json(sm)
            for i, o, n in zip(m["ids"], m["offsets"], m["lengths"], strict=True):
                self._where[i] = (k, o, n)

    @property
    def ids(self) -> list[str]:
        return list(self._where)

    @property
    def num_layers(self) -> int:
        return len(self.meta["layers"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __contains__(self, uid: str) -> bool:
        return uid in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, uid: str) -> np.ndarray:
        try:
            k, o, n = self._where[uid]
        except KeyError:
            raise FeatureStoreError(f"{self.dir}: no features for utterance {uid!r}") from None
        if k not in self._arrays:
            self._arrays[k] = np.load(self.dir / f"shard-{k:05d}.npy", mmap_mode="r")
        return self._arrays[k][o : o + n]

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for uid in self._where:
            yield uid, self[uid]
