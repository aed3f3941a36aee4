"""The embedded corpus: deterministic, multi-domain, train and test text disjoint, 16 kHz mono FLAC."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import soundfile as sf

from labelbudget import phones
from labelbudget.corpus import HELD_OUT_VOICES, LABELED_VOICES, plan, synthesize
from labelbudget.schema import Synth
from labelbudget.synth import Espeak, segments_from_events, text_split

TESTS = ["in_domain", "unseen_accents", "noisy", "reverb", "telephone", "rate_extremes"]


def tiny() -> Synth:
    return Synth(unlabeled_hours=0.01, labeled_hours=0.01, test_utterances=2, test_sets=TESTS, shard_size=4,
                 workers=2)


def digest(directory) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(directory).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize(tiny(), 0, tmp_path_factory.mktemp("synth"))


def test_same_seed_gives_the_same_bytes(corpus, tmp_path):
    again = synthesize(tiny(), 0, tmp_path)
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
    parts = plan(tiny().model_copy(update={"unlabeled_hours": 0.2, "labeled_hours": 0.05, "test_utterances": 20}), 0)
    unlabeled_domains = {u["domain"] for u in parts["unlabeled"]}
    assert {"unlabeled-clean", "unlabeled-noise", "unlabeled-reverb", "unlabeled-telephone"} <= unlabeled_domains
    assert {u["voice"] for u in parts["labeled"]} <= set(LABELED_VOICES)
    assert {u["voice"] for u in parts["test-unseen_accents"]} <= set(HELD_OUT_VOICES)
    assert all(u["effect"][0] == "telephone" for u in parts["test-telephone"])
    assert all(u["rate"] < 120 or u["rate"] > 240 for u in parts["test-rate_extremes"])


def test_unknown_test_set_is_named():
    with pytest.raises(ValueError, match="whispered"):
        plan(tiny().model_copy(update={"test_sets": ["whispered"]}), 0)


def test_phone_segments_lie_inside_each_utterance_in_time_order(corpus):
    for part in corpus.parts:
        aligned = phones.read_part(corpus.dir, part)
        rows = corpus.read(part)
        assert set(aligned) == {r["id"] for r in rows}
        for r in rows:
            n = sf.info(str(corpus.audio_path(r))).frames
            segs = aligned[r["id"]]
            assert segs, r["id"]
            bounds = [x for _, a, b in segs for x in (a, b)]
            assert bounds == sorted(bounds), f"{r['id']}: segments overlap or are out of order"
            assert 0 <= bounds[0] and bounds[-1] <= n, f"{r['id']}: a segment lies outside the audio"
            assert all(b >= a for _, a, b in segs)  # espeak folds some /l/ after a vowel into it: zero length


def test_phone_labels_are_the_phonemes_espeak_gives_for_the_text(corpus):
    tts = Espeak()
    for part in corpus.parts:
        aligned = phones.read_part(corpus.dir, part)
        for r in corpus.read(part):
            assert [p for p, _, _ in aligned[r["id"]]] == tts.text_to_phonemes(r["text"], r["speaker"]), r["id"]


def test_phones_cover_the_speech_of_clean_utterances_at_16k(corpus):
    """Positions refer to the 16 kHz audio: almost all energy of a clean utterance lies inside its phones
    (positions left at espeak's 22.05 kHz would overrun the audio and miss most of its end)."""
    aligned = phones.read_part(corpus.dir, "labeled")
    for r in corpus.read("labeled"):
        wav, _ = sf.read(str(corpus.audio_path(r)), dtype="float32")
        inside = np.zeros(len(wav), bool)
        for _, a, b in aligned[r["id"]]:
            inside[a:b] = True
        energy = np.square(wav.astype(np.float64))
        assert energy[inside].sum() > 0.98 * energy.sum(), r["id"]
        assert aligned[r["id"]][-1][2] > 0.9 * len(wav)


def test_pauses_end_the_previous_phone_and_become_gaps():
    events = [("h", 10), ("@", 30), ("_", 50), ("l", 70), ("_:", 90)]
    assert segments_from_events(events, 100) == [("h", 10, 30), ("@", 30, 50), ("l", 70, 90)]


def test_frame_labels_take_the_phone_at_each_frame_centre_and_sil_elsewhere():
    segs = [["'aI", 1600, 3200], ["t", 3200, 4000]]  # 0.1-0.2 s, 0.2-0.25 s at 16 kHz
    labels = phones.frame_labels(segs, 30, frame_rate=100.0)
    assert list(labels[:10]) == ["sil"] * 10
    assert list(labels[10:20]) == ["aI"] * 10  # stress mark dropped: one class per phone
    assert list(labels[20:25]) == ["t"] * 5 and list(labels[25:]) == ["sil"] * 5
    # 25 Hz: centres at 0, 640, ..., 4480 samples
    assert list(phones.frame_labels(segs, 8, frame_rate=25.0)) == ["sil"] * 3 + ["aI"] * 2 + ["t"] * 2 + ["sil"]
