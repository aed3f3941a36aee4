"""The manifest contract between stages: one JSON Lines file per part, one utterance per line.

A corpus directory holds `corpus.json` (where the audio root is, which parts exist, held-out speakers) and
`manifests/<part>.jsonl` for `unlabeled`, `labeled` and every test set (`test-<name>`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from labelbudget.errors import CorpusNotFoundError
from labelbudget.io import read_json, read_jsonl, write_json, write_jsonl

FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "audio": str,
    "duration": (int, float),
    "sample_rate": int,
    "text": str,
    "speaker": str,
    "domain": str,
}
TEST_PREFIX = "test-"
# Clean renderings of degraded unlabeled utterances (synthesized corpus only): `clean/<id>.flac` in the corpus
# directory, the same speech before its noise, reverberation or telephone channel. Pretraining with
# `clean_targets` computes its targets from them while the encoder hears the degraded audio (WavLM).
CLEAN_DIR = "clean"


def inside(root: Path | str, path: Path | str) -> bool:
    """`path` stays inside `root` once `..` and symlinks are resolved (checked without opening the file)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, path))
    return real == real_root or real.startswith(real_root + os.sep)


@dataclass
class Corpus:
    """A corpus on disk: audio root plus the manifests of its parts."""

    dir: Path
    root: Path
    unlabeled: str = "unlabeled"
    labeled: str = "labeled"
    tests: list[str] = field(default_factory=list)
    held_out_speakers: list[str] = field(default_factory=list)
    source: str = "synth"

    @property
    def parts(self) -> list[str]:
        return [self.unlabeled, self.labeled, *(TEST_PREFIX + t for t in self.tests)]

    def manifest_path(self, part: str) -> Path:
        return self.dir / "manifests" / f"{part}.jsonl"

    def read(self, part: str) -> list[dict]:
        return read_jsonl(self.manifest_path(part))

    def test_part(self, name: str) -> str:
        return TEST_PREFIX + name

    def audio_path(self, row: dict) -> Path:
        return self.root / row["audio"]

    def clean_path(self, row: dict) -> Path | None:
        """The clean rendering of a degraded utterance, or None (a clean one, or a corpus without them)."""
        path = self.dir / CLEAN_DIR / f"{row['id']}.flac"
        return path if path.exists() else None

    def save_meta(self) -> None:
        # Audio inside the corpus directory is recorded relative to it, so the directory can move (DVC cache).
        try:
            root = self.root.resolve().relative_to(self.dir.resolve())
        except ValueError:
            root = self.root.resolve()
        write_json(
            self.dir / "corpus.json",
            {
                "root": str(root),
                "tests": self.tests,
                "held_out_speakers": sorted(self.held_out_speakers),
                "source": self.source,
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> Corpus:
        directory = Path(directory)
        meta_path = directory / "corpus.json"
        if not meta_path.exists():
            raise CorpusNotFoundError(f"{meta_path}: no corpus description; run the `corpus` stage first")
        meta = read_json(meta_path)
        root = Path(meta["root"])
        if not root.is_absolute():
            root = (directory / root).resolve()
        return cls(
            dir=directory,
            root=root,
            tests=list(meta["tests"]),
            held_out_speakers=list(meta.get("held_out_speakers", [])),
            source=meta.get("source", "unknown"),
        )


def write_manifest(path: str | Path, rows: list[dict]) -> None:
    write_jsonl(path, [{k: r[k] for k in FIELDS} for r in rows])


def total_hours(rows: list[dict]) -> float:
    return sum(r["duration"] for r in rows) / 3600.0
