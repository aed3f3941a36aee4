"""Linear phone probe: how much phone identity each layer of an upstream carries, frame by frame.

The classic fast measure of speech representations (CPC, APC, SUPERB's phoneme task): one linear softmax
classifier per hidden state, on single standardised frames, fitted with full-batch L-BFGS (convex: the
result does not depend on an initialisation or a learning rate) on a fixed, seeded subset of the labeled pool,
scored as frame accuracy on every test set and on all of their frames together (the weighted mean, weights =
each test set's share of frames). Labels come from the corpus' phone alignments (labelbudget.phones), taken
at each frame's centre at the upstream's frame rate; frames no phone covers are the class `sil`. Classes are
the sorted set of the training frames' labels; a test frame of a phone never seen in training counts as an
error. `chance` is the accuracy of always answering the training frames' majority class.

Used twice: by the `probe` stage on an upstream's cached features (`probe_upstream`), and during pretraining
as a monitor on the encoder being trained (`PretrainingProbe`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from labelbudget import phones
from labelbudget.featstore import FeatureStore
from labelbudget.io import write_json
from labelbudget.manifest import Corpus

if TYPE_CHECKING:
    from labelbudget.schema import Params

# Weight penalty on standardised frames: keeps L-BFGS finite on separable classes and curbs overfitting of small
# probe sets (smoke profile, random encoder: train accuracy .87 instead of .97, test accuracy .44 instead of .41).
L2 = 1e-3


@dataclass
class Frames:
    """Frames of some utterances: features (frames, layers, dim) and their phone classes."""

    x: np.ndarray
    labels: np.ndarray  # object array of class names

    @classmethod
    def collect(cls, feats: Iterable[np.ndarray], segments: Iterable[phones.Segments], frame_rate: float
                ) -> Frames:
        xs, ys = [], []
        for f, segs in zip(feats, segments, strict=True):
            xs.append(np.asarray(f))
            ys.append(phones.frame_labels(segs, len(f), frame_rate))
        return cls(np.concatenate(xs), np.concatenate(ys))


def select(ids: Iterable[str], n: int, seed: int) -> list[str]:
    """A fixed, seeded choice of `n` ids (all of them when there are fewer), in id order."""
    ids = sorted(ids)
    if n >= len(ids):
        return ids
    pick = np.random.default_rng(seed).choice(len(ids), n, replace=False)
    return sorted(ids[i] for i in pick)


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, max_iter: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax regression on standardised (N, D) frames: (mean, std, weight (D, C), bias (C)).

    Zero-initialised and RNG-free, so that a probe inside pretraining never moves the training's random stream."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-4)
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, y) + L2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return mean, std, w.detach(), b.detach()


def probe_layers(train: Frames, tests: Mapping[str, Frames], layers: list[int], max_iter: int,
                 device: torch.device | str = "cpu") -> dict:
    """Fit one probe per layer on `train`, score it on each of `tests`: the metrics the stage writes. On a GPU
    (`device`) the fits cost milliseconds: what keeps the pretraining monitor cheap there."""
    classes = sorted(set(train.labels) | {phones.SIL})
    index = {c: k for k, c in enumerate(classes)}

    def encode(labels: np.ndarray) -> torch.Tensor:  # -1: a phone unseen in training, never predicted
        return torch.tensor([index.get(c, -1) for c in labels], dtype=torch.long, device=device)

    y = encode(train.labels)
    ys = {t: encode(f.labels) for t, f in tests.items()}
    frames = {t: len(v) for t, v in ys.items()}
    total = sum(frames.values())
    majority = int(torch.bincount(y, minlength=len(classes)).argmax())

    def scores(correct: Mapping[str, int]) -> dict:
        return {"weighted": sum(correct.values()) / max(total, 1),
                "tests": {t: correct[t] / max(frames[t], 1) for t in tests}}

    out: dict = {"layers": layers, "classes": classes, "train_frames": len(y), "test_frames": frames,
                 "unseen_frames": {t: float((v < 0).float().mean()) if len(v) else 0.0 for t, v in ys.items()},
                 "chance": scores({t: int((v == majority).sum()) for t, v in ys.items()}), "accuracy": {}}
    for k, layer in enumerate(layers):
        def tensor(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x.astype(np.float32)).to(device)

        mean, std, w, b = fit_linear(tensor(train.x[:, k]), y, len(classes), max_iter)

        def predict(x: np.ndarray, mean=mean, std=std, w=w, b=b) -> torch.Tensor:
            return (((tensor(x) - mean) / std) @ w + b).argmax(-1)

        acc = scores({t: int((predict(f.x[:, k]) == ys[t]).sum()) for t, f in tests.items()})
        acc["train"] = float((predict(train.x[:, k]) == y).float().mean())
        out["accuracy"][str(layer)] = acc
    best = max(layers, key=lambda layer: out["accuracy"][str(layer)]["weighted"])
    out["best_layer"], out["best"] = best, out["accuracy"][str(best)]["weighted"]
    return out


def probe_upstream(name: str, params: Params, features: Path, corpus_dir: Path, out: Path) -> dict:
    """The probe of upstream `name` from its cached features (`features/<part>/`, every layer kept) into
    `out/metrics.json`; a corpus without phone alignments writes `{"skipped": why}` instead."""
    start = time.time()
    corpus = Corpus.load(corpus_dir)
    parts = {corpus.labeled: corpus.labeled, **{t: corpus.test_part(t) for t in corpus.tests}}
    aligned = {part: phones.read_part(corpus_dir, part) for part in parts.values()}
    missing = [part for part, a in aligned.items() if a is None]
    if missing:
        result = {"upstream": name, "skipped": f"no phone alignments for {', '.join(missing)} (corpus source "
                                               f"{corpus.source!r})"}
        write_json(out / "metrics.json", result)
        return result
    p = params.probe
    train_store = FeatureStore(features / corpus.labeled)
    ids = select([i for i in train_store.ids if i in aligned[corpus.labeled]], p.train_utterances,
                 params.seed)
    rate = float(train_store.meta["frame_rate"])
    train = Frames.collect((train_store[i] for i in ids), (aligned[corpus.labeled][i] for i in ids), rate)
    tests = {}
    for t in corpus.tests:
        store = FeatureStore(features / corpus.test_part(t))
        segs = aligned[corpus.test_part(t)]
        tests[t] = Frames.collect((f for _, f in store.items()), (segs[i] for i in store.ids), rate)
    result = {"upstream": name, "frame_rate": rate, "train_utterances": len(ids),
              **probe_layers(train, tests, list(train_store.meta["layers"]), p.max_iter)}
    result["seconds"] = round(time.time() - start, 1)
    write_json(out / "metrics.json", result)
    return result


class PretrainingProbe:
    """The probe as a pretraining monitor (labelbudget.pretraining): every `every` updates, the encoder's
    hidden states of `utterances` labeled utterances (fixed, seeded) are computed once per call; a probe per
    layer is fitted on three quarters of them and scored on the rest. Audio is decoded and log-mel computed
    once, at the first call."""

    def __init__(self, corpus_dir: Path, every: int, utterances: int, max_iter: int, seed: int):
        self.corpus_dir, self.every, self.utterances = Path(corpus_dir), every, utterances
        self.max_iter, self.seed = max_iter, seed
        self._batches: list[tuple[torch.Tensor, torch.Tensor, list[phones.Segments], list[bool]]] | None = None
        self._untrained: float | None = None

    @classmethod
    def from_params(cls, params: Params, corpus_dir: Path) -> PretrainingProbe | None:
        """None when switched off (`probe.pretrain.every: 0`) or when the corpus has no phone alignments."""
        p = params.probe.pretrain
        if p.every <= 0:
            return None
        corpus = Corpus.load(corpus_dir)
        if phones.read_part(corpus_dir, corpus.labeled) is None:
            print(f"probe during pretraining skipped: no phone alignments in {corpus_dir} (source {corpus.source})")
            return None
        return cls(corpus_dir, p.every, p.utterances, p.max_iter, params.seed)

    def _prepare(self, n_mels: int) -> None:
        from labelbudget.batching import WaveDataset, bucket_batches, collate_waves
        from labelbudget.logmel import LogMel, normalize

        corpus = Corpus.load(self.corpus_dir)
        aligned = phones.read_part(self.corpus_dir, corpus.labeled)
        rows = {r["id"]: r for r in corpus.read(corpus.labeled)}
        ids = select([i for i in rows if i in aligned], self.utterances, self.seed)
        ds = WaveDataset([str(corpus.audio_path(rows[i])) for i in ids], [rows[i]["duration"] for i in ids])
        logmel = LogMel(n_mels)
        self._batches = []
        with torch.inference_mode():
            for batch in bucket_batches(ds.durations, 60.0):
                wav, lengths = collate_waves([ds[j] for j in batch])
                feats, flens = logmel(wav, lengths)
                # every fourth utterance (in id order) is held out for scoring
                self._batches.append((normalize(feats, flens), flens, [aligned[ids[j]] for j in batch],
                                      [j % 4 == 3 for j in batch]))

    def __call__(self, encoder: torch.nn.Module) -> dict[str, float]:
        """`probe/phone_acc` (best layer, on the held-out quarter), `probe/best_layer`, and `probe/gain_over_random`:
        the gain over the same encoder shape never trained (seeded like the `random` upstream, measured once)."""
        if self._batches is None:
            self._prepare(encoder.cfg.n_mels)
        if self._untrained is None:
            from labelbudget.encoder import Encoder

            with torch.random.fork_rng(devices=[]):  # the training's random stream stays untouched
                torch.manual_seed(self.seed)
                untrained = Encoder(encoder.cfg).to(next(encoder.parameters()).device)
            self._untrained = self._probe(untrained)["probe/phone_acc"]
        out = self._probe(encoder)
        return {**out, "probe/gain_over_random": out["probe/phone_acc"] - self._untrained}

    def _probe(self, encoder: torch.nn.Module) -> dict[str, float]:
        from labelbudget.logmel import HOP, SAMPLE_RATE

        rate = SAMPLE_RATE / HOP / encoder.subsampling
        device = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.eval()  # no dropout: also leaves the training's random stream untouched
        split: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
        try:
            with torch.inference_mode():
                for x, lengths, segs, held in self._batches:
                    hidden, out_len = encoder(x.to(device), lengths.to(device))
                    stacked = torch.stack(hidden, dim=2).float().cpu().numpy()
                    for b, n in enumerate(out_len.cpu()):
                        split[held[b]][0].append(stacked[b, : int(n)])
                        split[held[b]][1].append(segs[b])
        finally:
            encoder.train(was_training)
        train, held_out = Frames.collect(*split[False], rate), Frames.collect(*split[True], rate)
        result = probe_layers(train, {"held_out": held_out}, list(range(len(hidden))), self.max_iter, device)
        return {"probe/phone_acc": result["best"], "probe/best_layer": float(result["best_layer"])}
