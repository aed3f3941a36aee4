"""Phone alignments beside a corpus: the side files the phone probe reads (labelbudget.probe).

The synthesized corpus writes, next to `manifests/`, a folder `phones/`:

  phones/index.json         {"source": "espeak-ng phoneme events" | null, "sample_rate": 16000,
                             "parts": [parts that have alignments]}
  phones/<part>.jsonl       one line per utterance: {"id": ..., "phones": [[phone, start, end], ...]}

`phone` is espeak-ng's mnemonic as its phoneme events report it (stress marks kept, e.g. "'aI"); `start` and
`end` (exclusive) are sample positions in the part's final 16 kHz audio. Segments are in time order and do
not overlap; gaps between them (leading and trailing silence, pauses) are silence. A phone espeak folds into
its neighbour (an /l/ after some vowels) has start == end: it is in the sequence but labels no frame.
An ingested corpus has no alignments: its index names no part and the probe is skipped. The manifests
themselves are unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelbudget.io import read_json, read_jsonl, write_json, write_jsonl

DIR = "phones"
INDEX = "index.json"
SIL = "sil"  # the class of frames that no phone covers
STRESS = "',"  # espeak's primary and secondary stress marks: not part of a phone's identity

Segments = list[list]  # [[phone, start_sample, end_sample], ...]


def write_index(corpus_dir: str | Path, parts: list[str], source: str | None, sample_rate: int = 16000) -> None:
    """Always written (an empty one for corpora without alignments): DVC stages can depend on the folder."""
    write_json(Path(corpus_dir) / DIR / INDEX, {"source": source, "sample_rate": sample_rate, "parts": parts})


def write_part(corpus_dir: str | Path, part: str, rows: dict[str, Segments]) -> None:
    write_jsonl(Path(corpus_dir) / DIR / f"{part}.jsonl", [{"id": i, "phones": s} for i, s in rows.items()])


def read_part(corpus_dir: str | Path, part: str) -> dict[str, Segments] | None:
    """id -> segments of one part, or None when the corpus has no alignments for it."""
    d = Path(corpus_dir) / DIR
    if not (d / INDEX).exists() or part not in read_json(d / INDEX)["parts"]:
        return None
    return {r["id"]: r["phones"] for r in read_jsonl(d / f"{part}.jsonl")}


def phone_class(name: str) -> str:
    """The probe's class of an espeak mnemonic: stress marks dropped ("'aI" and "aI" are one phone)."""
    return name.strip(STRESS) or SIL


def frame_labels(segments: Segments, num_frames: int, frame_rate: float, sample_rate: int = 16000) -> np.ndarray:
    """The phone class at the centre of each of `num_frames` frames (object array of str; SIL where no
    phone is). Frame i is centred on i / frame_rate seconds: true of the centred STFT (fbank, 100 Hz) and of
    the padded stride-2 convolutions of our encoder (25 Hz)."""
    labels = np.full(num_frames, SIL, dtype=object)
    if not segments or num_frames == 0:
        return labels
    starts = np.array([s[1] for s in segments])
    ends = np.array([s[2] for s in segments])
    names = np.array([phone_class(s[0]) for s in segments], dtype=object)
    at = np.arange(num_frames) * (sample_rate / frame_rate)
    k = np.searchsorted(starts, at, side="right") - 1
    inside = (k >= 0) & (at < ends[np.clip(k, 0, None)])
    labels[inside] = names[k[inside]]
    return labels
