"""A tiny speech-like corpus written at test time (chirps and noise bursts, a few seconds each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelbudget import audio
from labelbudget.manifest import Corpus, write_manifest

WORDS = "the cat sat on a mat and we ran to see it go up far away".split()


def make_utterance(rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    f0 = rng.uniform(100, 300)
    wav = 0.3 * np.sin(2 * np.pi * (f0 + 200 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)) * t)
    env = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > -0.3).astype(np.float32)
    return (wav * env + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def build(root: Path, n_unlabeled: int = 24, n_labeled: int = 24, tests: tuple[str, ...] = ("clean", "noisy"),
          n_test: int = 6, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    corpus = Corpus(dir=root, root=root / "audio", tests=list(tests), held_out_speakers=["spk-held"])
    counts = {"unlabeled": n_unlabeled, "labeled": n_labeled, **{f"test-{t}": n_test for t in tests}}
    for part, n in counts.items():
        rows = []
        for i in range(n):
            uid = f"{part}-{i:04d}"
            seconds = float(rng.uniform(1.0, 3.0))
            wav = make_utterance(rng, seconds)
            audio.save(root / "audio" / part / f"{uid}.flac", wav)
            words = [WORDS[j] for j in rng.integers(0, len(WORDS), int(rng.integers(3, 8)))]
            text = " ".join(words)
            rows.append({"id": uid, "audio": f"{part}/{uid}.flac", "duration": round(len(wav) / 16000, 4),
                         "sample_rate": 16000, "text": text,
                         "speaker": f"spk-{i % 4}", "domain": part})
        write_manifest(corpus.manifest_path(part), rows)
    corpus.save_meta()
    return corpus
