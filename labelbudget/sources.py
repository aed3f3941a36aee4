"""Real corpora into the same manifests as the synthesized corpus: LibriSpeech / Libri-light, Common Voice,
and a generic CSV/JSONL manifest.

`ingest(source, cfg, out)` reads `params.yaml: corpus.ingest`:

    path: /data/LibriSpeech          # corpus root; audio stays there, manifests point into it
    unlabeled: [train-clean-360]     # subsets (LibriSpeech), tsv names (Common Voice) or manifest files
    labeled: [train-clean-100]
    tests: {clean: test-clean, other: test-other}   # test-set name -> subset (or a list of subsets)
    held_out_speakers: []            # speaker ids that must not be in the labeled data, or `tests`: every
                                     # speaker of the test parts

Audio is never copied, moved or rewritten: manifests hold paths relative to the corpus root, and duration and
sample rate come from each file's header. A file whose header cannot be read (missing, corrupt) keeps a row
with duration 0 and sample rate 0, so that the `validate` stage names it instead of this stage dying on the
first bad file.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from labelbudget import audio, phones
from labelbudget.errors import CorpusError, CorpusNotFoundError
from labelbudget.io import read_jsonl
from labelbudget.manifest import TEST_PREFIX, Corpus, inside, write_manifest
from labelbudget.schema import Ingest, Params

SOURCES = ("librispeech", "commonvoice", "manifest")
AUDIO_SUFFIXES = (".flac", ".wav")  # what a LibriSpeech-layout tree without transcripts may hold
UNKNOWN_SPEAKER = "unknown"
_TEST_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # test names become file names (manifests, metrics)

# A reader turns one subset of the corpus into manifest rows without header fields:
# (root, subset, transcribed) -> [{"id", "audio", "text", "speaker", "domain"[, "duration"]}]
Reader = Callable[[Path, str, bool], list[dict]]


def ingest(source: str, cfg: Ingest, out: Path) -> Corpus:
    """Write `out/manifests/<part>.jsonl`, `out/corpus.json` and an empty `out/phones/index.json` (no
    alignments) for a real corpus; return the Corpus."""
    readers: dict[str, Reader] = {"librispeech": _librispeech, "commonvoice": _commonvoice,
                                  "manifest": _manifest}
    if source not in readers:
        raise CorpusError(f"params corpus.source: unknown {source!r}; choose synth or one of "
                         f"{', '.join(SOURCES)}")
    root = _root(cfg)
    out = Path(out)
    plan = _plan(cfg)
    reader = readers[source]

    tests = [p.removeprefix(TEST_PREFIX) for p in plan if p.startswith(TEST_PREFIX)]
    corpus = Corpus(dir=out, root=root, tests=tests, source=source)
    unreadable = 0
    speakers_in_tests: set[str] = set()
    for part, subsets in plan.items():
        rows = [r for subset in subsets for r in reader(root, subset, part != corpus.unlabeled)]
        if not rows:
            raise CorpusError(f"corpus.ingest: part {part!r} is empty: {subsets} under {root} hold no "
                             "utterances")
        _confine(rows, root, part)
        unreadable += _add_header_fields(rows, root, desc=part)
        if part.startswith(TEST_PREFIX):
            speakers_in_tests.update(r["speaker"] for r in rows)
        write_manifest(corpus.manifest_path(part), rows)

    held_out = cfg.held_out_speakers
    corpus.held_out_speakers = (sorted(speakers_in_tests) if held_out == "tests"
                                else [str(s) for s in held_out])
    corpus.save_meta()
    phones.write_index(out, [], None)  # no phone alignments: the phone probe is skipped
    if unreadable:
        print(f"warning: {unreadable} audio file(s) are missing or unreadable; the validate stage lists them",
              file=sys.stderr)
    return corpus


def _root(cfg: Ingest) -> Path:
    if not cfg.path:
        raise CorpusError("params corpus.ingest.path is empty: set it to the root directory of your corpus")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise CorpusNotFoundError(f"{root}: corpus root not found (params corpus.ingest.path)")
    return root.resolve()


def _confine(rows: list[dict], root: Path, part: str) -> None:
    """Refuse audio paths that leave the corpus root (`../..`, absolute elsewhere, a symlink out) before any
    file is opened: a manifest must not make the pipeline read, hash or copy files it does not own."""
    outside = [r["audio"] for r in rows if not inside(root, r["audio"])]
    if outside:
        raise CorpusError(f"part {part!r}: {len(outside)} audio path(s) leave the corpus root {root}, e.g. "
                          f"{', '.join(repr(a) for a in outside[:3])}; none was opened. Move the audio under "
                          "the root or point corpus.ingest.path at a folder that holds it all")


def _as_list(value: str | list | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _plan(cfg: Ingest) -> dict[str, list[str]]:
    """Part name -> the subsets it is made of, checked before any file is read."""
    plan = {"unlabeled": _as_list(cfg.unlabeled), "labeled": _as_list(cfg.labeled)}
    for name, subsets in cfg.tests.items():
        if not _TEST_NAME.fullmatch(str(name)):
            raise CorpusError(f"params corpus.ingest.tests: name {name!r} may only use letters, digits, "
                             "'_', '-', '.'")
        plan[TEST_PREFIX + str(name)] = _as_list(subsets)
    for part, subsets in plan.items():
        if not subsets:
            key = f"tests.{part.removeprefix(TEST_PREFIX)}" if part.startswith(TEST_PREFIX) else part
            raise CorpusError(f"params corpus.ingest.{key} names no subset")
    if len(plan) == 2:
        raise CorpusError("params corpus.ingest.tests is empty: name at least one test set, "
                         "e.g. {clean: test-clean}")
    return plan


def _add_header_fields(rows: list[dict], root: Path, desc: str) -> int:
    """Fill duration (unless the source declared one) and sample rate from each file's header.

    Returns how many files could not be read; their rows get 0 so that validation reports them.
    """
    bad = 0
    for r in tqdm(rows, desc=f"read headers {desc}", unit="file", leave=False):
        try:
            sr, _, frames = audio.info(root / r["audio"])
        except RuntimeError:  # soundfile's error for missing, truncated or unknown files
            sr, frames, bad = 0, 0, bad + 1
        r["sample_rate"] = sr
        if r.get("duration") is None:
            r["duration"] = round(frames / sr, 4) if sr else 0.0
    return bad


# --- LibriSpeech / Libri-light ----------------------------------------------------------------------------


def _subset_dir(root: Path, subset: str) -> Path:
    d = root / subset
    if not d.is_dir():
        raise CorpusNotFoundError(f"{d}: subset {subset!r} not found under the corpus root")
    return d


def _librispeech(root: Path, subset: str, transcribed: bool) -> list[dict]:
    """`<subset>/.../<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` with `<speaker>-<chapter>.trans.txt`.

    Transcripts are searched recursively, which also covers Libri-light's limited-supervision splits
    (`librispeech_finetuning/1h/0/clean/...`). Untranscribed parts take every audio file instead, so that
    Libri-light's unlabeled audio (no transcripts at all) works too.
    """
    d = _subset_dir(root, subset)
    texts: dict[Path, str] = {}  # audio path -> transcript
    for trans in sorted(d.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if line.strip():
                utt, _, text = line.strip().partition(" ")
                texts[trans.parent / f"{utt}.flac"] = text.strip()
    if transcribed:
        if not texts:
            raise CorpusNotFoundError(f"{d}: no *.trans.txt transcripts; not a LibriSpeech-layout subset "
                                    "with labels")
        files = list(texts)  # listed utterances, even if the audio is missing: validation names those
    else:
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())

    rows = []
    for f in files:
        speaker, chapter = f.parent.parent.name, f.parent.name
        # LibriSpeech ids already name speaker and chapter; other audio gets them prefixed to stay unique.
        uid = f.stem if f.stem.startswith(f"{speaker}-{chapter}-") else f"{speaker}-{chapter}-{f.stem}"
        rows.append({"id": uid, "audio": f.relative_to(root).as_posix(), "text": texts.get(f, ""),
                     "speaker": speaker, "domain": subset})
    return rows


# --- Common Voice -----------------------------------------------------------------------------------------


def mp3_supported() -> bool:
    import soundfile as sf  # lazy, like labelbudget.audio

    return "MP3" in sf.available_formats()


def _commonvoice(root: Path, name: str, transcribed: bool) -> list[dict]:
    """`<root>/<name>.tsv` (columns client_id, path, sentence, ...) with the audio in `<root>/clips/`."""
    tsv = root / (name if name.endswith(".tsv") else f"{name}.tsv")
    if not tsv.is_file():
        raise CorpusNotFoundError(f"{tsv}: Common Voice table not found under the corpus root")
    with open(tsv, encoding="utf-8", newline="") as f:
        # Sentences contain quotes; Common Voice does not quote fields.
        table = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    columns = set(table[0]) if table else set()
    needed = {"path", "sentence"} if transcribed else {"path"}
    if table and not needed <= columns:
        raise CorpusError(f"{tsv}: columns {sorted(needed - columns)} missing (found {sorted(columns)})")

    rows = []
    for rec in table:
        clip = rec["path"] if Path(rec["path"]).suffix else rec["path"] + ".mp3"
        rows.append({"id": Path(clip).stem, "audio": f"clips/{clip}",
                     "text": (rec.get("sentence") or "").strip(),
                     "speaker": rec.get("client_id") or UNKNOWN_SPEAKER, "domain": tsv.stem})
    if any(r["audio"].lower().endswith(".mp3") for r in rows) and not mp3_supported():
        import soundfile as sf

        raise audio.AudioDecodeError(
            f"{root / 'clips'}: Common Voice clips are MP3, but soundfile {sf.__version__} (libsndfile "
            f"{sf.__libsndfile_version__}) cannot decode MP3. Install soundfile >= 0.12.1, whose wheels "
            "bundle libsndfile >= 1.1 with MP3 support (`pip install -U soundfile`), or convert the clips to "
            "FLAC (e.g. with ffmpeg) and ingest them with `source: manifest`."
        )
    return rows


# --- generic CSV / TSV / JSONL manifest -------------------------------------------------------------------


def _read_table(path: Path) -> list[dict]:
    if path.suffix.lower() in (".jsonl", ".json"):
        return read_jsonl(path)
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))


def _manifest(root: Path, name: str, transcribed: bool) -> list[dict]:
    """A user's CSV/TSV/JSONL with columns `audio` (relative to the corpus root, or absolute), `text`, and
    optionally `speaker`, `duration`, `id`. A declared duration is kept, so validation checks it against the
    audio; otherwise it comes from the header."""
    path = Path(name) if Path(name).is_absolute() else root / name
    if not path.is_file():
        raise CorpusNotFoundError(f"{path}: manifest not found")
    table = _read_table(path)
    needed = {"audio", "text"} if transcribed else {"audio"}
    rows = []
    for lineno, rec in enumerate(table, 1):
        missing = needed - {k for k, v in rec.items() if v is not None}
        if missing:
            raise CorpusError(f"{path}: row {lineno} lacks {sorted(missing)} (columns: audio, text, "
                             "optional speaker, duration, id)")
        # Paths are kept as written (relative to the root); absolute ones are made relative, which may give
        # `../...` for audio outside the root: validation reports those rather than this stage guessing.
        rel = Path(rec["audio"])
        if rel.is_absolute():
            rel = Path(os.path.relpath(rel, root))
        rows.append({
            "id": str(rec.get("id") or rel.with_suffix("").as_posix().replace("/", "-")),
            "audio": rel.as_posix(),
            "text": str(rec.get("text") or ""),
            "speaker": str(rec.get("speaker") or UNKNOWN_SPEAKER),
            "domain": path.stem,
            "duration": _declared_duration(rec.get("duration"), path, lineno),
        })
    return rows


def _declared_duration(value: object, path: Path, lineno: int) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except ValueError:
        raise CorpusError(f"{path}: row {lineno}: duration {value!r} is not a number of seconds") from None


def prepare(params: Params, out: Path) -> Corpus:
    """The corpus of params `corpus` into `out` (atomically): synthesized (`source: synth`) or ingested."""
    from labelbudget.io import atomic_dir

    source = params.corpus.source
    with atomic_dir(out) as tmp:
        if source == "synth":
            from labelbudget.corpus import count_utterances, synthesize

            cfg = params.corpus.synth
            with tqdm(total=count_utterances(cfg), desc="synthesize", unit="utt") as bar:
                synthesize(cfg, params.seed, tmp, progress=bar.update)
        else:
            ingest(source, params.corpus.ingest, tmp)
    return Corpus.load(out)  # fail loudly here, not three stages later, if the description is unreadable
