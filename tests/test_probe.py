"""The linear phone probe: it finds phone information where there is some, it is skipped where a corpus has no
alignments, and as a pretraining monitor it logs without changing what is trained."""

from __future__ import annotations

import csv

import pytest
import torch
from defaults import params

from labelbudget.extraction import extract_upstream
from labelbudget.io import read_json
from labelbudget.pretraining import pretrain
from labelbudget.probe import PretrainingProbe, probe_upstream, select
from labelbudget.schema import Params


def smoke_params(**pretrain: object) -> Params:
    return params(wandb={"mode": "disabled"}, pretrain=pretrain)


def test_probe_on_fbank_beats_the_majority_class_clearly(synth_corpus, tmp_path):
    p = smoke_params()
    extract_upstream("fbank", p, synth_corpus.dir, tmp_path / "features")
    r = probe_upstream("fbank", p, tmp_path / "features", synth_corpus.dir, tmp_path / "probe")
    assert read_json(tmp_path / "probe" / "metrics.json") == r
    assert r["frame_rate"] == 100.0 and r["layers"] == [0] and r["best_layer"] == 0
    assert "sil" in r["classes"] and r["classes"] == sorted(r["classes"])
    chance = r["chance"]["weighted"]
    assert r["best"] > max(2 * chance, chance + 0.15), (r["best"], chance)
    assert set(r["accuracy"]["0"]["tests"]) == {"in_domain", "noisy"}


def test_probe_is_skipped_for_a_corpus_without_phone_alignments(speech_corpus, tmp_path):
    r = probe_upstream("fbank", smoke_params(), tmp_path / "no-features", speech_corpus.dir, tmp_path)
    assert "skipped" in r and "labeled" in r["skipped"]
    assert read_json(tmp_path / "metrics.json") == r
    assert PretrainingProbe.from_params(smoke_params(), speech_corpus.dir) is None


def test_the_probe_subset_is_fixed_by_the_seed():
    ids = [f"u{i:03d}" for i in range(50)]
    assert select(ids, 10, 3) == select(list(reversed(ids)), 10, 3) != select(ids, 10, 4)
    assert select(ids, 80, 3) == ids


def test_probe_monitor_logs_phone_accuracy_without_changing_the_trained_weights(synth_corpus, tmp_path):
    p = smoke_params(max_steps=6, checkpoint_every=3, warmup_steps=2, batch_seconds=6)
    plain = pretrain("small", p, tmp_path / "plain", synth_corpus.dir)
    monitor = PretrainingProbe.from_params(p, synth_corpus.dir)
    assert monitor is not None and monitor.every == 3
    probed = pretrain("small", p, tmp_path / "probed", synth_corpus.dir, monitor=monitor)
    a = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)["encoder"]
    b = torch.load(tmp_path / "probed" / "model.pt", weights_only=True)["encoder"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the monitor leaves the random stream alone
    assert probed["train/loss"] == pytest.approx(plain["train/loss"])
    assert 0 < probed["probe/phone_acc"] <= 1 and 0 < probed["monitor_share"] < 1
    with open(tmp_path / "probed" / "history.csv", newline="") as f:
        logged = [(int(r["step"]), float(r["probe/phone_acc"])) for r in csv.DictReader(f) if r["probe/phone_acc"]]
    assert [s for s, _ in logged] == [3, 6] and logged[-1][1] == pytest.approx(probed["probe/phone_acc"])
