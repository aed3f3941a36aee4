"""Pretraining resumes exactly and runs under DDP; extraction is resumable, layer-limited and checkpoint-safe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from defaults import raw
from lightning.pytorch.callbacks import Callback

from labelbudget import batching, upstreams
from labelbudget.extraction import NonFiniteFeaturesError, extract_part, resolve_layers
from labelbudget.featstore import FeatureStore
from labelbudget.pretraining import pretrain
from labelbudget.schema import Params, parse_params
from labelbudget.ssl import NonFiniteLossError
from labelbudget.upstreams.ssl import CheckpointError

REPO = Path(__file__).resolve().parent.parent


def raw_params(**pretrain_overrides) -> dict:
    return raw(wandb={"mode": "disabled"}, pretrain={"max_steps": 6, "checkpoint_every": 2, "warmup_steps": 2,
                                                    "batch_seconds": 6, **pretrain_overrides})


def params(**pretrain_overrides) -> Params:
    return parse_params(raw_params(**pretrain_overrides))


@pytest.fixture(scope="session")
def corpus(speech_corpus):
    return speech_corpus


def encoder_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["encoder"]


class CrashAt(Callback):
    """A crash at the start of update `step`, as a killed process would leave the run."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *_):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def test_killed_run_resumes_to_the_same_step_and_weights(tmp_path, corpus):
    p = params()
    whole = pretrain("small", p, tmp_path / "whole", corpus.dir)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain("small", p, tmp_path / "resumed", corpus.dir, callbacks=[CrashAt(3)])
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").exists()
    resumed = pretrain("small", p, tmp_path / "resumed", corpus.dir)
    assert resumed["steps"] == whole["steps"] == 6
    a, b = encoder_weights(tmp_path / "whole" / "model.pt"), encoder_weights(tmp_path / "resumed" / "model.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_rerun_after_the_final_checkpoint_keeps_the_diagnostics(tmp_path, corpus):
    first = pretrain("small", params(), tmp_path, corpus.dir)
    again = pretrain("small", params(), tmp_path, corpus.dir)  # resumes at max_steps: trains nothing
    assert again["steps"] == first["steps"] == 6
    assert again["train/loss"] == pytest.approx(first["train/loss"], rel=1e-4)
    assert again["train/masked_acc"] == pytest.approx(first["train/masked_acc"], rel=1e-4)


def test_checkpoints_of_another_config_are_not_resumed(tmp_path, corpus):
    pretrain("small", params(), tmp_path, corpus.dir)
    summary = pretrain("small", params(lr=0.01, max_steps=3), tmp_path, corpus.dir)
    assert summary["steps"] == 3  # started over instead of resuming at step 6


@pytest.mark.parametrize("layer", [None, 1], ids=["log-mel", "untrained-encoder-layer-1"])
def test_hubert_objective_trains_on_kmeans_targets_of_log_mel_or_a_never_trained_encoder(tmp_path, corpus, layer):
    from labelbudget.encoder import Encoder, EncoderConfig

    p = params(objective="hubert", kmeans_clusters=16, kmeans_utterances=8, kmeans_layer=layer, max_steps=3)
    summary = pretrain("small", p, tmp_path, corpus.dir)
    blob = torch.load(tmp_path / "model.pt", weights_only=True)
    cfg = EncoderConfig.from_params(p.models["small"], p.features.n_mels)
    centroids = blob["quantizer"]["centroids"]
    assert centroids.shape == (16, cfg.dim if layer else 4 * cfg.n_mels) and summary["objective"] == "hubert"
    assert len(torch.unique(centroids, dim=0)) == 16
    if layer:  # the teacher is the `random` upstream's encoder, untouched by training
        torch.manual_seed(p.seed)
        control = Encoder(cfg).state_dict()
        teacher = {k.removeprefix("teacher."): v for k, v in blob["quantizer"].items() if k.startswith("teacher.")}
        assert teacher.keys() == control.keys() and all(torch.equal(teacher[k], control[k]) for k in control)


def test_bf16_mixed_precision_with_gradient_clipping_trains(tmp_path, corpus):
    """The GPU profile's combination (bf16-mixed autocast + gradient clipping) through the real Trainer: a
    fused AdamW made Lightning refuse it at the first step. CPU autocast takes the same code path."""
    summary = pretrain("small", params(precision="bf16-mixed", grad_clip=1.0, max_steps=3), tmp_path, corpus.dir)
    assert summary["steps"] == 3 and np.isfinite(summary["train/loss"])
    assert (tmp_path / "model.pt").exists()


def test_a_nan_batch_stops_pretraining_with_a_message_and_exports_nothing(tmp_path, corpus, monkeypatch):
    real = batching.WaveDataset.__getitem__
    calls = {"n": 0}

    def corrupt_after_a_few(self, i):  # a corrupt audio file reached at the third batch or so
        calls["n"] += 1
        wav = real(self, i)
        return wav * float("nan") if calls["n"] > 6 else wav

    monkeypatch.setattr(batching.WaveDataset, "__getitem__", corrupt_after_a_few)
    # bestrq: its targets need no data, so the corrupt file is first met by a training batch
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at update \d+.*no weights exported"):
        pretrain("small", params(max_steps=20, objective="bestrq"), tmp_path, corpus.dir)
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "metrics.json").exists()
    assert (tmp_path / "history.csv").exists()  # the curves up to the divergence are kept


def test_k_means_targets_refuse_non_finite_frames_naming_the_cause(tmp_path, corpus, monkeypatch):
    real = batching.WaveDataset.__getitem__
    monkeypatch.setattr(batching.WaveDataset, "__getitem__", lambda self, i: real(self, i) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"k-means targets: .* non-finite log-mel frames"):
        pretrain("small", params(objective="hubert"), tmp_path, corpus.dir)
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.slow
def test_pretraining_runs_with_two_ddp_processes_on_cpu(tmp_path, corpus):
    p = raw_params(devices=2, strategy="ddp", max_steps=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    (tmp_path / "data").mkdir()
    os.symlink(corpus.dir, tmp_path / "data" / "corpus")
    env = {**os.environ, "WANDB_MODE": "disabled", "PL_DISABLE_FORK": "1"}
    r = subprocess.run([sys.executable, str(REPO / "stages" / "pretrain.py"), "small"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"steps": 3' in r.stdout
    assert (tmp_path / "models" / "pretrain" / "small" / "model.pt").exists()


def load_upstream(name: str, p: dict, models_dir: Path) -> upstreams.Upstream:
    """An upstream of the smoke params, SSL sizes read from `models_dir/<size>/model.pt`."""
    for size in p["ssl_sizes"]:
        p["upstreams"][size]["source"] = str(models_dir / size / "model.pt")
    return upstreams.load(name, parse_params(p))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("models")
    pretrain("small", params(max_steps=2), out / "small", corpus.dir)
    return out


def test_extraction_keeps_requested_layers_in_float16(tmp_path, corpus, pretrained):
    up = load_upstream("small", raw_params(), pretrained)
    layers = resolve_layers([1], up)
    extract_part(up, corpus, "test-clean", tmp_path, layers, 10, 4, torch.device("cpu"))
    store = FeatureStore(tmp_path)
    assert len(store) == 6 and store.meta["layers"] == [1]
    x = store[store.ids[0]]
    assert x.dtype == np.float16 and x.shape[1:] == (1, up.dim)


def test_half_written_shard_is_redone_and_complete_ones_reused(tmp_path, corpus, pretrained):
    up = load_upstream("fbank", raw_params(), pretrained)
    first = extract_part(up, corpus, "labeled", tmp_path, [0], 10, 8, torch.device("cpu"))
    reference = {i: np.array(v) for i, v in FeatureStore(tmp_path).items()}
    shard = tmp_path / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:100])  # a crash mid-write
    again = extract_part(up, corpus, "labeled", tmp_path, [0], 10, 8, torch.device("cpu"))
    assert first["reused_shards"] == 0 and again["reused_shards"] == first["shards"] - 1
    for i, v in FeatureStore(tmp_path).items():
        assert np.array_equal(v, reference[i])


def test_features_of_another_checkpoint_are_discarded_not_mixed(tmp_path, corpus, pretrained):
    extract_part(load_upstream("fbank", raw_params(), pretrained), corpus, "test-clean", tmp_path, [0], 10, 2,
                 torch.device("cpu"))
    up = load_upstream("small", raw_params(), pretrained)
    summary = extract_part(up, corpus, "test-clean", tmp_path, [0, 1], 10, 2, torch.device("cpu"))
    assert summary["reused_shards"] == 0
    assert FeatureStore(tmp_path).meta["checkpoint_sha256"] == up.fingerprint


def test_missing_or_truncated_checkpoint_is_named(tmp_path, pretrained):
    with pytest.raises(CheckpointError, match="missing"):
        load_upstream("large", raw_params(), pretrained)
    bad = tmp_path / "small"
    bad.mkdir()
    (bad / "model.pt").write_bytes((pretrained / "small" / "model.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"small/model.pt: unreadable"):
        load_upstream("small", raw_params(), tmp_path)


def test_extraction_refuses_non_finite_features_and_writes_no_shard(tmp_path, corpus, pretrained):
    up = load_upstream("small", raw_params(), pretrained)
    with torch.no_grad():
        up.encoder.layers[0].linear1.weight.fill_(float("nan"))  # what a diverged checkpoint holds
    with pytest.raises(NonFiniteFeaturesError, match=r"upstream 'small'.*non-finite features.*'test-clean'"):
        extract_part(up, corpus, "test-clean", tmp_path, [0, 1], 10, 4, torch.device("cpu"))
    assert not list(tmp_path.glob("shard-*"))
