"""The embedded corpus: deterministic, multi-domain, train and test text disjoint, 16 kHz mono FLAC."""

from __future__ import annotations

import hashlib

import pytest
import soundfile as sf

from labelbudget.corpus import HELD_OUT_VOICES, LABELED_VOICES, SynthConfig, plan, synthesize
from labelbudget.synth import text_split

TESTS = ["in_domain", "unseen_accents", "noisy", "reverb", "telephone", "rate_extremes"]


def tiny(seed: int = 0) -> SynthConfig:
    return SynthConfig(unlabeled_hours=0.01, labeled_hours=0.01, test_utterances=2, test_sets=TESTS,
                       seed=seed, shard_size=4, workers=2)


def digest(directory) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(directory).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize(tiny(), tmp_path_factory.mktemp("synth"))


def test_same_seed_gives_the_same_bytes(corpus, tmp_path):
    again = synthesize(tiny(), tmp_path)
    assert digest(corpus.dir) == digest(again.dir)


def test_audio_is_16k_mono_flac_with_the_manifest_duration(corpus):
    for part in corpus.parts:
        for row in corpus.read(part):
            info = sf.info(str(corpus.audio_path(row)))
            assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
            assert abs(info.frames / 16000 - row["duration"]) < 1e-3


def test_train_and_test_text_are_disjoint(corpus):
    train = {r["text"] for p in ("unlabeled", "labeled") for r in corpus.read(p)}
    test = {r["text"] for t in corpus.tests for r in corpus.read(corpus.test_part(t))}
    assert train and test and not train & test
    assert all(text_split(t) == "test" for t in test)


def test_each_part_draws_its_own_domain():
    parts = plan(SynthConfig(unlabeled_hours=0.2, labeled_hours=0.05, test_utterances=20, test_sets=TESTS))
    unlabeled_domains = {u["domain"] for u in parts["unlabeled"]}
    assert {"unlabeled-clean", "unlabeled-noise", "unlabeled-reverb", "unlabeled-telephone"} <= unlabeled_domains
    assert {u["voice"] for u in parts["labeled"]} <= set(LABELED_VOICES)
    assert {u["voice"] for u in parts["test-unseen_accents"]} <= set(HELD_OUT_VOICES)
    assert all(u["effect"][0] == "telephone" for u in parts["test-telephone"])
    assert all(u["rate"] < 120 or u["rate"] > 240 for u in parts["test-rate_extremes"])


def test_unknown_test_set_is_named():
    with pytest.raises(ValueError, match="whispered"):
        plan(SynthConfig(unlabeled_hours=0.01, labeled_hours=0.01, test_utterances=1, test_sets=["whispered"]))
