"""`labelbudget transcribe`: a finetune applied to audio it never saw, refused when its upstream changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corpora import build_corpus
from defaults import params, section

from labelbudget import transcription as T
from labelbudget.downstream import DownstreamModel, save_checkpoint
from labelbudget.io import write_jsonl

PARAMS = params()  # the fbank upstream of 80 log-mel bands


@pytest.fixture
def finetune(tmp_path) -> Path:
    """An (untrained) fbank finetune, saved as the finetune stage saves one."""
    model = DownstreamModel(section("finetune", layer=0, dim=16, hidden=16), num_layers=1, dim=80, input_rate=100.0)
    meta = {"upstream": "fbank", "features_layers": [0], "layer_index": 0,
            "features_meta": {"upstream": "fbank", "checkpoint_sha256": "log-mel n_mels=80", "frame_rate": 100.0}}
    save_checkpoint(tmp_path / "ft" / "model.pt", model, meta)
    return tmp_path / "ft"


def test_files_and_a_manifest_are_transcribed_and_scored_against_references(tmp_path, finetune):
    corpus = build_corpus(tmp_path, n_unlabeled=0, n_labeled=0, n_test=3)
    rows = corpus.read("test-clean")
    manifest = tmp_path / "mine.jsonl"
    write_jsonl(manifest, [{"id": r["id"], "audio": r["audio"], "text": r["text"]} for r in rows])
    out = T.transcribe_files(finetune, T.read_inputs([], manifest, corpus.root), PARAMS)
    assert [r["id"] for r in out] == [r["id"] for r in rows] and all(isinstance(r["hyp"], str) for r in out)
    scores = T.score(out)
    assert scores["utterances"] == 3 and scores["wer"] >= 0
    files = T.read_inputs([corpus.audio_path(r) for r in rows[:2]], None, None)
    assert [r["id"] for r in T.transcribe_files(finetune, files, PARAMS)] == [rows[0]["id"], rows[1]["id"]]
    assert T.score(T.transcribe_files(finetune, files, PARAMS)) is None  # no references, no score
    T.write(out, tmp_path / "hyps.jsonl")
    assert json.loads((tmp_path / "hyps.jsonl").read_text().splitlines()[0])["hyp"] == out[0]["hyp"]


def test_a_changed_upstream_or_missing_audio_is_refused_by_name(tmp_path, finetune):
    corpus = build_corpus(tmp_path, n_unlabeled=0, n_labeled=0, n_test=1)
    files = T.read_inputs([corpus.audio_path(corpus.read("test-clean")[0])], None, None)
    changed = params(features={"n_mels": 40})
    with pytest.raises(T.TranscriptionError, match="upstream 'fbank' is not the one"):
        T.transcribe_files(finetune, files, changed)
    with pytest.raises(T.TranscriptionError, match=r"1 audio file\(s\) not found, e.g. .*nowhere.flac"):
        T.read_inputs([tmp_path / "nowhere.flac"], None, None)
