"""Real-corpus ingestion: each layout becomes the same manifests, the user's files are never touched, and a
wrong path or an MP3-less soundfile gives an error that names what to fix."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
from corpora import SR, VALIDATE_CFG, build_corpus, build_librispeech, sentence, tone, write_audio
from defaults import ingest, params

from labelbudget import audio, phones, sources
from labelbudget.audio import AudioDecodeError
from labelbudget.errors import CorpusError
from labelbudget.manifest import FIELDS, Corpus, write_manifest
from labelbudget.validation import validate_corpus


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def libri_cfg(root: Path, **changes: object) -> dict:
    cfg = {"path": str(root), "unlabeled": ["train-other-500"], "labeled": ["train-clean-100"],
           "tests": {"clean": "test-clean"}, "held_out_speakers": []}
    return {**cfg, **changes}


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ls") / "LibriSpeech"
    return build_librispeech(root, {"train-clean-100": 2, "train-other-500": 1, "test-clean": 1})


def test_librispeech_layout_becomes_manifests_pointing_into_the_untouched_corpus(
        librispeech: Path, tmp_path: Path) -> None:
    before = snapshot(librispeech)
    corpus = ingest("librispeech", libri_cfg(librispeech, held_out_speakers="tests"), tmp_path / "corpus")

    assert corpus.parts == ["unlabeled", "labeled", "test-clean"]
    labeled = corpus.read("labeled")
    assert [r["id"] for r in labeled] == ["100-10-0000", "100-10-0001", "101-10-0000", "101-10-0001"]
    first = labeled[0]
    assert set(first) == set(FIELDS)
    assert first == {"id": "100-10-0000", "audio": "train-clean-100/100/10/100-10-0000.flac",
                     "duration": 1.0, "sample_rate": SR, "text": sentence(0).upper(), "speaker": "100",
                     "domain": "train-clean-100"}
    assert [r["speaker"] for r in corpus.read("test-clean")] == ["300", "301"]
    assert len(corpus.read("unlabeled")) == 2

    # corpus.json: absolute user root, test speakers held out; audio not copied, user files unchanged.
    loaded = Corpus.load(tmp_path / "corpus")
    assert loaded.root == librispeech.resolve() and loaded.source == "librispeech"
    assert loaded.held_out_speakers == ["300", "301"]
    assert all(loaded.audio_path(r).is_file() for r in labeled)
    assert not list((tmp_path / "corpus").rglob("*.flac"))
    assert snapshot(librispeech) == before


def test_librilight_nested_splits_and_untranscribed_audio_are_found(tmp_path: Path) -> None:
    root = build_librispeech(tmp_path / "librilight", {"librispeech_finetuning/1h/0/clean": 1,
                                                       "librispeech_finetuning/1h/0/other": 1,
                                                       "test-clean": 1})
    # Libri-light's unlabeled audio: <speaker>/<book>/<file>.flac, no transcripts at all.
    for spk in ("7", "8"):
        write_audio(root / "unlab/small" / spk / "some_book_64kb/01_chapter.flac", tone(seed=int(spk)))
    cfg = {"path": str(root), "unlabeled": "unlab/small", "labeled": ["librispeech_finetuning/1h"],
           "tests": {"clean": ["test-clean"]}}
    corpus = ingest("librispeech", cfg, tmp_path / "corpus")

    labeled = corpus.read("labeled")
    assert {r["speaker"] for r in labeled} == {"100", "101", "200", "201"}
    assert {r["domain"] for r in labeled} == {"librispeech_finetuning/1h"}
    assert labeled[0]["audio"] == "librispeech_finetuning/1h/0/clean/100/10/100-10-0000.flac"
    unlabeled = corpus.read("unlabeled")
    assert [(r["id"], r["speaker"], r["text"]) for r in unlabeled] == [
        ("7-some_book_64kb-01_chapter", "7", ""), ("8-some_book_64kb-01_chapter", "8", "")]


def write_tsv(path: Path, rows: list[dict]) -> None:
    """Like Common Voice: tab-separated, never quoted (sentences keep their quote characters)."""
    columns = ["client_id", "path", "sentence", "up_votes"]
    lines = ["\t".join(columns), *("\t".join(str(r[c]) for c in columns) for r in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_commonvoice(root: Path, fmt: str = "MP3") -> Path:
    tables = {"train": 3, "other": 2, "test": 2}
    k = 0
    for name, n in tables.items():
        rows = []
        for i in range(n):
            clip = f"common_voice_en_{k}.mp3"
            write_audio(root / "clips" / clip, tone(seed=k, sr=48000), sr=48000, fmt=fmt)
            text = f'"{sentence(k).capitalize()}," she said.' if name != "other" else ""
            rows.append({"client_id": f"client{i % 2}{name}", "path": clip, "sentence": text, "up_votes": 2})
            k += 1
        write_tsv(root / f"{name}.tsv", rows)
    return root


@pytest.mark.skipif(not sources.mp3_supported(), reason="this soundfile cannot write MP3")
def test_common_voice_tsv_becomes_manifests(tmp_path: Path) -> None:
    root = build_commonvoice(tmp_path / "cv-corpus" / "en")
    before = snapshot(root)
    cfg = {"path": str(root), "unlabeled": ["other"], "labeled": ["train.tsv"], "tests": {"cv": "test"}}
    corpus = ingest("commonvoice", cfg, tmp_path / "corpus")

    labeled = corpus.read("labeled")
    assert [r["id"] for r in labeled] == ["common_voice_en_0", "common_voice_en_1", "common_voice_en_2"]
    assert labeled[0]["audio"] == "clips/common_voice_en_0.mp3"
    assert labeled[0]["text"] == f'"{sentence(0).capitalize()}," she said.'  # quotes survive (no CSV quoting)
    assert labeled[0]["speaker"] == "client0train" and labeled[0]["domain"] == "train"
    assert labeled[0]["sample_rate"] == 48000 and abs(labeled[0]["duration"] - 1.0) < 0.1
    assert [r["text"] for r in corpus.read("unlabeled")] == ["", ""]
    assert len(corpus.read("test-cv")) == 2
    assert snapshot(root) == before


def test_common_voice_without_mp3_support_says_what_to_install(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_commonvoice(tmp_path / "cv", fmt="WAV")  # names end in .mp3 like the real clips
    monkeypatch.setattr(sources, "mp3_supported", lambda: False)
    cfg = {"path": str(root), "unlabeled": ["other"], "labeled": ["train"], "tests": {"cv": "test"}}
    with pytest.raises(AudioDecodeError, match=r"cannot decode MP3.*pip install -U soundfile"):
        ingest("commonvoice", cfg, tmp_path / "corpus")


def test_undecodable_mp3_clip_is_kept_and_named_by_validation(tmp_path: Path) -> None:
    from labelbudget.validation import validate_corpus

    root = tmp_path / "cv"
    for name, k in (("train", 0), ("other", 1), ("test", 2)):
        clip = f"clip{k}.mp3"
        write_audio(root / "clips" / clip, tone(seed=k))
        row = {"client_id": "c", "path": clip, "sentence": sentence(k), "up_votes": 1}
        write_tsv(root / f"{name}.tsv", [row])
    (root / "clips" / "clip0.mp3").write_bytes(b"ID3 this is not an mp3")
    cfg = {"path": str(root), "unlabeled": ["other"], "labeled": ["train"], "tests": {"cv": "test"}}
    corpus = ingest("commonvoice", cfg, tmp_path / "corpus")
    assert corpus.read("labeled")[0]["sample_rate"] == 0  # unreadable header: a row for the gate to name

    report = validate_corpus(corpus, VALIDATE_CFG, progress=False)
    (row,) = report["rules"]["decodes"]["rows"]
    assert row["file"] == str(root / "clips" / "clip0.mp3")
    assert "pip install -U soundfile" in row["values"]["error"]


def test_csv_and_jsonl_manifests_become_manifests(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    for k in range(4):
        write_audio(root / "wavs" / f"a{k}.wav", tone(seed=k, seconds=0.5), fmt="WAV")
    with open(root / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["audio", "text", "speaker"])
        w.writerow(["wavs/a0.wav", "hello, world", "ann"])
        w.writerow([str(root / "wavs" / "a1.wav"), "good morning", ""])  # absolute path, no speaker
    (root / "lists").mkdir()
    (root / "lists" / "test.jsonl").write_text(
        json.dumps({"audio": "wavs/a2.wav", "text": "bye", "id": "utt-x", "duration": 0.5}) + "\n")
    (root / "pool.jsonl").write_text(json.dumps({"audio": "wavs/a3.wav"}) + "\n")  # unlabeled: no text needed

    cfg = {"path": str(root), "unlabeled": ["pool.jsonl"], "labeled": ["train.csv"],
           "tests": {"mine": "lists/test.jsonl"}, "held_out_speakers": ["bob"]}
    corpus = ingest("manifest", cfg, tmp_path / "corpus")

    assert corpus.read("labeled") == [
        {"id": "wavs-a0", "audio": "wavs/a0.wav", "duration": 0.5, "sample_rate": SR, "text": "hello, world",
         "speaker": "ann", "domain": "train"},
        {"id": "wavs-a1", "audio": "wavs/a1.wav", "duration": 0.5, "sample_rate": SR, "text": "good morning",
         "speaker": "unknown", "domain": "train"},
    ]
    assert corpus.read("test-mine")[0] == {"id": "utt-x", "audio": "wavs/a2.wav", "duration": 0.5,
                                               "sample_rate": SR, "text": "bye", "speaker": "unknown",
                                               "domain": "test"}
    assert corpus.read("unlabeled")[0]["text"] == ""
    assert Corpus.load(tmp_path / "corpus").held_out_speakers == ["bob"]
    # no phone alignments: an index naming no part (the probe is skipped), no side file
    assert all(phones.read_part(corpus.dir, part) is None for part in corpus.parts)
    assert [f.name for f in (corpus.dir / "phones").iterdir()] == ["index.json"]


def test_manifest_without_audio_column_names_the_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("wav,text\nx.wav,hi\n")
    (tmp_path / "test.csv").write_text("audio,text\nx.wav,hi\n")
    cfg = {"path": str(tmp_path), "unlabeled": ["train.csv"], "labeled": ["train.csv"],
           "tests": {"t": "test.csv"}}
    with pytest.raises(ValueError, match=r"train\.csv: row 1 lacks \['audio'\]"):
        ingest("manifest", cfg, tmp_path / "corpus")


@pytest.mark.parametrize(("source", "change", "error", "message"), [
    ("librispeech", {"path": ""}, ValueError, r"corpus\.ingest\.path is empty"),
    ("librispeech", {"path": "/no/such/LS"}, FileNotFoundError, r"/no/such/LS: corpus root not found"),
    ("librispeech", {"labeled": ["train-clean-360"]}, FileNotFoundError, r"LibriSpeech/train-clean-360: sub"),
    ("librispeech", {"tests": {"x": "dev-clean"}}, FileNotFoundError, r"LibriSpeech/dev-clean: subset"),
    ("librispeech", {"labeled": []}, ValueError, r"corpus\.ingest\.labeled names no subset"),
    ("librispeech", {"tests": {}}, ValueError, r"corpus\.ingest\.tests is empty"),
    ("librispeech", {"tests": {"a/b": "test-clean"}}, ValueError, r"name 'a/b' may only use"),
    ("commonvoice", {"unlabeled": ["train"]}, FileNotFoundError, r"LibriSpeech/train\.tsv: Common Voice"),
    ("manifest", {"unlabeled": ["train.csv"]}, FileNotFoundError, r"LibriSpeech/train\.csv: manifest not"),
    ("kaldi", {}, ValueError, r"unknown 'kaldi'"),
])
def test_wrong_configuration_gives_an_error_naming_the_path(
        librispeech: Path, tmp_path: Path, source: str, change: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ingest(source, libri_cfg(librispeech, **change), tmp_path / "corpus")


def test_subset_without_audio_is_an_empty_part_error(tmp_path: Path) -> None:
    root = tmp_path / "copy"
    (root / "empty-subset").mkdir(parents=True)
    (root / "labeled").mkdir()
    with pytest.raises(ValueError, match=r"part 'unlabeled' is empty: \['empty-subset'\]"):
        ingest("librispeech", {"path": str(root), "unlabeled": ["empty-subset"], "labeled": ["labeled"],
                               "tests": {"t": "labeled"}}, tmp_path / "corpus")


def test_labeled_subset_without_transcripts_says_so(tmp_path: Path) -> None:
    write_audio(tmp_path / "raw" / "1" / "2" / "1-2-0000.flac", tone(seed=0))
    with pytest.raises(FileNotFoundError, match=r"raw: no \*\.trans\.txt transcripts"):
        ingest("librispeech", {"path": str(tmp_path), "unlabeled": ["raw"], "labeled": ["raw"],
                               "tests": {"t": "raw"}}, tmp_path / "corpus")


_opened: list[str] | None = None  # paths opened while a test records (audit hooks cannot be removed)


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file opened during the test: Python's `open` (audit hook) and libsndfile's, which opens by name in
    C and so passes our audio module (recorded there)."""
    global _opened
    _opened = []
    for name in ("load", "info"):
        real = getattr(audio, name)
        monkeypatch.setattr(audio, name, lambda path, *a, _real=real, **k: (_opened.append(
            os.path.realpath(path)), _real(path, *a, **k))[1])
    yield _opened
    _opened = None


def test_audio_paths_leaving_the_corpus_root_are_refused_before_any_is_opened(tmp_path: Path, opened) -> None:
    root, outside = tmp_path / "mine", tmp_path / "secret"
    write_audio(root / "wavs" / "ok.wav", tone(seed=1, seconds=0.5), fmt="WAV")
    write_audio(outside / "a.wav", tone(seed=2, seconds=0.5), fmt="WAV")
    (root / "wavs" / "link.wav").symlink_to(outside / "a.wav")
    rows = ["wavs/ok.wav", "../secret/a.wav", str(outside / "a.wav"), "wavs/link.wav", "wavs/../../secret/a.wav"]
    (root / "train.csv").write_text("audio,text\n" + "".join(f"{a},hi\n" for a in rows))
    (root / "test.csv").write_text("audio,text\nwavs/ok.wav,hi\n")
    cfg = {"path": str(root), "unlabeled": ["test.csv"], "labeled": ["train.csv"], "tests": {"t": "test.csv"}}

    with pytest.raises(CorpusError, match=r"'labeled': 4 audio path\(s\) leave the corpus root .*none was opened"):
        sources.prepare(params(corpus={"source": "manifest", "ingest": cfg}), tmp_path / "data" / "corpus")
    assert str((outside / "a.wav").resolve()) not in opened
    assert not list((tmp_path / "data").iterdir())  # nothing half-written


def test_validation_reports_paths_outside_the_root_without_opening_them(tmp_path: Path, opened) -> None:
    corpus = build_corpus(tmp_path)
    secret = tmp_path / "secret.flac"
    write_audio(secret, tone(seed=3))
    rows = corpus.read("labeled")
    (corpus.root / "escape.flac").symlink_to(secret)
    rows[0]["audio"], rows[1]["audio"] = "escape.flac", os.path.relpath(secret, corpus.root)
    write_manifest(corpus.manifest_path("labeled"), rows)

    report = validate_corpus(corpus, VALIDATE_CFG.model_copy(update={"workers": 1}), progress=False)
    assert {r["id"] for r in report["rules"]["path_inside_root"]["rows"]} == {rows[0]["id"], rows[1]["id"]}
    assert str(secret.resolve()) not in opened
