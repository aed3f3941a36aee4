"""Tiny corpora written at test time (no audio is committed): our own format, and the LibriSpeech layout.

Every file is a short sine with noise bursts, distinct per seed, so that no two files share content unless a
test makes them. Builders return what the tests need to point `ingest`, `validate_corpus` or a stage at.
Fixtures built from them live in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from defaults import section

from labelbudget.manifest import Corpus, write_manifest

SR = 16000
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine",
    "we walked along the river before dawn",
    "she sells sea shells by the sea shore",
    "every cloud has a silver lining",
    "the early bird catches the worm",
    "he read the letter twice before he answered",
    "rain fell on the old tin roof all night",
    "they painted the fence a bright shade of green",
    "an apple a day keeps the doctor away",
    "the children's choir sang in the hall",
    "our train left the station at noon",
]



def sentence(k: int) -> str:
    """The k-th fixture transcript; all distinct, all within the character vocabulary."""
    return SENTENCES[k % len(SENTENCES)] + " again" * (k // len(SENTENCES))


# The `validate` params of the profiles, with two workers for the 2-core machine.
VALIDATE_CFG = section("validate", workers=2)


def tone(seed: int, seconds: float = 1.0, sr: int = SR, channels: int = 1,
         amplitude: float = 0.3) -> np.ndarray:
    """A sine plus noise bursts: loud enough to pass the silence check, unique per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wav = amplitude * np.sin(2 * np.pi * rng.uniform(120, 400) * t)
    wav += 0.05 * (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > 0.3) * rng.standard_normal(len(t))
    if channels > 1:
        wav = np.stack([wav] * channels, axis=1)
    return wav.astype(np.float32)


def write_audio(path: Path, wav: np.ndarray, sr: int = SR, fmt: str = "FLAC") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = None if fmt == "MP3" else "PCM_16"
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sr, format=fmt, subtype=subtype)
    return path


def build_corpus(tmp: Path, n_unlabeled: int = 3, n_labeled: int = 3, n_test: int = 2,
                 corpus_dir: str = "corpus", tests: tuple[str, ...] = ("clean",),
                 seconds: tuple[float, float] = (1.0, 1.0), seed: int = 0) -> Corpus:
    """A clean corpus in our own format: `tmp/audio/<part>/<id>.flac`, manifests and corpus.json in
    `tmp/<corpus_dir>`. Test speakers are declared held out; every sentence is used once. Durations are drawn
    uniformly from `seconds` (fixed when both ends are equal)."""
    rng = np.random.default_rng(seed)
    corpus = Corpus(dir=tmp / corpus_dir, root=tmp / "audio", tests=list(tests),
                    held_out_speakers=[f"spk-t{i}" for i in range(n_test)], source="fixture")
    sizes = {"unlabeled": ("u", n_unlabeled), "labeled": ("l", n_labeled),
             **{f"test-{t}": (f"t{t}" if len(tests) > 1 else "t", n_test) for t in tests}}
    k = seed * 100_000
    for part, (tag, n) in sizes.items():
        rows = []
        for i in range(n):
            uid = f"{tag}-{i:03d}"
            duration = round(float(rng.uniform(*seconds)), 2)
            write_audio(corpus.root / part / f"{uid}.flac", tone(seed=k, seconds=duration))
            speaker = f"spk-t{i}" if part.startswith("test-") else f"spk-{tag}{i}"
            rows.append({"id": uid, "audio": f"{part}/{uid}.flac", "duration": duration, "sample_rate": SR,
                         "text": sentence(k), "speaker": speaker, "domain": part})
            k += 1
        write_manifest(corpus.manifest_path(part), rows)
    corpus.save_meta()
    return corpus


def build_librispeech(root: Path, subsets: dict[str, int], speakers: int = 2, chapter: int = 10) -> Path:
    """LibriSpeech layout: `<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` and
    `<speaker>-<chapter>.trans.txt` (transcripts upper-case, as in the real corpus). `subsets` maps a subset
    path (may be nested, like Libri-light's `librispeech_finetuning/1h/0/clean`) to utterances per speaker."""
    seed = 0
    for s, (subset, n) in enumerate(subsets.items()):
        for spk in range(speakers):
            speaker = f"{(s + 1) * 100 + spk}"
            d = root / subset / speaker / str(chapter)
            lines = []
            for u in range(n):
                uid = f"{speaker}-{chapter}-{u:04d}"
                write_audio(d / f"{uid}.flac", tone(seed=seed))
                lines.append(f"{uid} {sentence(seed).upper()}\n")
                seed += 1
            (d / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return root
