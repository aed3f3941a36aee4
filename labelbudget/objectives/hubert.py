"""Objective `hubert`: k-means cluster ids as targets, of stacked log-mel frames or, with `kmeans_layer`, of one
layer of a frozen never-trained encoder (HuBERT's later iterations, with an untrained teacher)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from labelbudget.batching import WaveDataset
from labelbudget.encoder import Encoder, subsampled_lengths
from labelbudget.logmel import LogMel, normalize
from labelbudget.ssl import NonFiniteLossError, stack_frames

if TYPE_CHECKING:
    from labelbudget.encoder import EncoderConfig
    from labelbudget.manifest import Corpus
    from labelbudget.schema import Pretrain


class KMeansQuantizer(nn.Module):
    """HuBERT-style targets: the nearest of k-means centroids fitted on stacked log-mel frames."""

    def __init__(self, centroids: torch.Tensor):
        super().__init__()
        self.register_buffer("centroids", centroids.float())

    @property
    def num_targets(self) -> int:
        return self.centroids.shape[0]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x.float(), self.centroids[None].expand(x.shape[0], -1, -1)).argmin(-1)

    @staticmethod
    def fit(frames: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
        """Plain k-means (k-means++ seeding) on (N, D) frames; returns (k, D) centroids."""
        g = torch.Generator().manual_seed(seed)
        n = frames.shape[0]
        if n < k:
            raise ValueError(f"k-means needs at least {k} frames, got {n}: add unlabeled audio or lower "
                             "kmeans_clusters")
        centroids = frames[torch.randint(n, (1,), generator=g)]
        for _ in range(1, k):
            d = torch.cdist(frames, centroids).min(1).values.square()
            centroids = torch.cat([centroids, frames[torch.multinomial(d + 1e-12, 1, generator=g)]])
        for _ in range(iters):
            centroids = KMeansQuantizer.update(frames, torch.cdist(frames, centroids).argmin(1), centroids)
        return centroids

    @staticmethod
    def update(frames: torch.Tensor, assign: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """One Lloyd step: each centroid moves to the mean of its frames; one that lost all keeps its place."""
        sums = torch.zeros_like(centroids).index_add_(0, assign, frames)
        counts = torch.bincount(assign, minlength=centroids.shape[0]).unsqueeze(1)
        return torch.where(counts > 0, sums / counts.clamp(min=1), centroids)


class TeacherKMeans(KMeansQuantizer):
    """HuBERT's later iterations with a never-trained teacher: k-means ids of one layer of a frozen encoder of the
    same shape, seeded as the `random` upstream. That encoder already probes far above log-mel (its frames see
    hundreds of ms), so its clusters are more phonetic first targets than log-mel k-means."""

    reads_features = True

    def __init__(self, teacher: Encoder, layer: int, centroids: torch.Tensor):
        super().__init__(centroids)
        self.teacher, self.layer = teacher.requires_grad_(False).eval(), layer

    def train(self, mode: bool = True) -> TeacherKMeans:
        super().train(mode)
        self.teacher.eval()  # never dropout: the targets of a frame do not change from one update to the next
        return self

    @torch.no_grad()
    def features(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.teacher(feats, lengths, max_layer=self.layer)
        return self.teacher.final_norm(hidden[self.layer]).float()

    @torch.no_grad()
    def from_features(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return super().forward(self.features(feats, lengths))


def targets(rows: list[dict], corpus: Corpus, p: Pretrain, cfg: EncoderConfig, seed: int) -> KMeansQuantizer:
    """HuBERT: k-means targets on a seeded sample of the unlabeled pool: stacked, normalised log-mel frames, or
    with `kmeans_layer` set, that layer of a never-trained encoder of the size being trained (TeacherKMeans)."""
    layer = p.kmeans_layer
    teacher = None
    if layer is not None:
        with torch.random.fork_rng():  # seeded as the `random` upstream, without moving the training's RNG
            torch.manual_seed(seed)
            teacher = Encoder(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(rows), generator=g)[: p.kmeans_utterances].tolist()
    # The clusters of the audio the targets are computed from: clean renderings with `clean_targets`.
    clean = [corpus.clean_path(rows[i]) if p.clean_targets else None for i in pick]
    data = WaveDataset([str(c or corpus.audio_path(rows[i])) for c, i in zip(clean, pick, strict=True)],
                       [rows[i]["duration"] for i in pick])
    logmel, frames = LogMel(cfg.n_mels), []
    for k in range(len(data)):
        wav = data[k][None]
        feats, flens = logmel(wav, torch.tensor([wav.shape[1]]))
        feats = normalize(feats, flens)
        if teacher is not None:
            with torch.no_grad():
                hidden, _ = teacher(feats, flens, max_layer=layer)
                frames.append(teacher.final_norm(hidden[layer])[0])
        else:
            frames.append(stack_frames(feats, int(subsampled_lengths(flens)[0]))[0])
    allf = torch.cat(frames)
    bad = int((~torch.isfinite(allf).all(1)).sum())
    if bad:
        raise NonFiniteLossError(f"k-means targets: {bad} of {len(allf)} non-finite log-mel frames in the "
                                 f"unlabeled sample ({len(pick)} utterances): corrupt audio; the validate stage "
                                 "names files that do not decode")
    if len(allf) > 50_000:  # plenty for k <= 1024; keeps the fit to seconds
        allf = allf[torch.randperm(len(allf), generator=g)[:50_000]]
    centroids = KMeansQuantizer.fit(allf, p.kmeans_clusters, seed=seed)
    return KMeansQuantizer(centroids) if teacher is None else TeacherKMeans(teacher, layer, centroids)
