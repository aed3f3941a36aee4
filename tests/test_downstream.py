"""Downstream CTC model on a fake feature store: it learns, it decodes, bad input fails before training, and
the finetune -> evaluate -> report stages run end to end on the fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from defaults import own_tests, raw, section

from labelbudget import downstream as ds
from labelbudget.errors import ParamsError
from labelbudget.evaluation import evaluate
from labelbudget.featstore import FeatureStore, ShardWriter
from labelbudget.finetuning import finetune
from labelbudget.io import write_json
from labelbudget.manifest import write_manifest
from labelbudget.metrics import MetricsError
from labelbudget.report import make_report
from labelbudget.runs import RunKey
from labelbudget.schema import Params, parse_params
from labelbudget.text import CHAR_TO_ID

ROOT = Path(__file__).resolve().parent.parent
LETTERS = "abcde"
TESTS = ["alpha", "beta"]
# Each upstream: (frame rate, layers kept, dim). fbank runs at 100 Hz and is stacked 4x by the downstream.
UPSTREAMS = {"small": (25, [1, 2, 3], 12), "large": (25, [1, 2, 3, 4], 16), "fbank": (100, [0], 8),
             "random": (25, [1, 2, 3, 4], 16)}


def fake_features(text: str, rate: int, n_layers: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """3 frames (at 25 Hz) per character, each a fixed prototype of the character plus noise; one layer holds
    the signal, the others mostly noise (so the layer weights have something to learn)."""
    protos = np.random.default_rng(7).normal(size=(len(CHAR_TO_ID), dim))
    per_char = 3 * rate // 25
    frames = [np.zeros((per_char, dim))]
    for ch in text:
        frames.append(np.repeat(protos[CHAR_TO_ID[ch]][None], per_char, axis=0))
    frames.append(np.zeros((per_char, dim)))
    signal = np.concatenate(frames)
    layers = [0.2 * rng.normal(size=signal.shape) for _ in range(n_layers)]
    layers[-1] += signal
    return np.stack(layers, axis=1).astype(np.float16)


def build_fixture(root: Path, n_labeled: int = 40, n_test: int = 6) -> dict:
    """A tiny corpus, subsets and features of every upstream, laid out as the pipeline does under data/."""
    rng = np.random.default_rng(0)

    def sentence() -> str:
        words = rng.integers(1, 3)
        return " ".join("".join(rng.choice(list(LETTERS), size=rng.integers(1, 4))) for _ in range(words))

    parts = {"labeled": [f"lab-{i:03d}" for i in range(n_labeled)],
             **{f"test-{t}": [f"{t}-{i:03d}" for i in range(n_test)] for t in TESTS}}
    texts = {uid: sentence() for ids in parts.values() for uid in ids}
    corpus = root / "data" / "corpus"
    for part, ids in [*parts.items(), ("unlabeled", [])]:
        write_manifest(corpus / "manifests" / f"{part}.jsonl", [
            {"id": i, "audio": f"{part}/{i}.flac", "duration": 0.12 * (len(texts[i]) + 2),
             "sample_rate": 16000, "text": texts[i], "speaker": "s0", "domain": part} for i in ids])
    write_json(corpus / "corpus.json", {"root": "audio", "tests": TESTS, "held_out_speakers": [],
                                        "source": "fixture"})
    subsets = root / "data" / "subsets"
    subsets.mkdir(parents=True)
    lab = parts["labeled"]
    (subsets / "dev.txt").write_text("\n".join(lab[:8]) + "\n")
    (subsets / "0.5min-seed0.txt").write_text("\n".join(lab[8:20]) + "\n")
    (subsets / "1min-seed0.txt").write_text("\n".join(lab[8:32]) + "\n")
    for up, (rate, layers, dim) in UPSTREAMS.items():
        for part, ids in parts.items():
            d = root / "data" / "features" / up / part
            d.mkdir(parents=True)
            ShardWriter(d, 0).write(ids, [fake_features(texts[i], rate, len(layers), dim, rng) for i in ids])
            write_json(d / "meta.json", {"upstream": up, "layers": layers, "dim": dim, "frame_rate": rate,
                                         "num_shards": 1, "checkpoint_sha256": None})
    return texts


def tiny_raw(**finetune) -> dict:
    """The smoke params for the fixture: its test sets, upstreams and budgets, a tiny fast downstream."""
    ft = {"layer": "weighted", "hidden": 32, "dropout": 0.0, "batch_size": 4, "lr": 0.01, "warmup_steps": 5,
          "time_masks": 1, "time_mask_frames": 2, "feature_masks": 1, "eval_every": 10, "patience": 3,
          "max_steps": 30, "num_threads": 1, "accelerator": "cpu", **finetune}
    ups = {"small": {"kind": "ssl", "source": "models/pretrain/small/model.pt"},
           "large": {"kind": "ssl", "source": "models/pretrain/large/model.pt"},
           "fbank": {"kind": "fbank", "source": "labelbudget/upstreams/fbank.py"},
           "random": {"kind": "random", "size": "large", "source": "models/shape/large.json"}}
    return raw(replace={"upstreams": ups}, seed=0, corpus=own_tests(*TESTS),
               subsets={"budgets_min": [0.5, 1], "seeds": [0]},
               wandb={"project": "labelbudget-test", "group": "test", "mode": "disabled"}, finetune=ft,
               evaluate={"decoder": {"name": "greedy"}, "weights": "words", "bootstrap": 100, "ci": 0.95,
                         "bootstrap_seed": 0},
               report={"smaller": "small", "larger": "large", "baseline": "fbank", "control": "random",
                       "wer_threshold": 0.5, "f3_margin": 0.25})


def tiny_params(**finetune) -> Params:
    return parse_params(tiny_raw(**finetune))


@pytest.fixture(autouse=True)
def one_thread():
    # Two threads on a shared 2-core machine can run 5x slower than one.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lb")
    build_fixture(root)
    return root


@pytest.fixture
def workdir(fixture_root, tmp_path, monkeypatch) -> Path:
    """A private copy of the fixture as the working directory (stages use paths relative to it)."""
    shutil.copytree(fixture_root / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return tmp_path


def datasets(root: Path, up: str = "small", ids_file: str = "1min-seed0.txt"):
    from labelbudget.manifest import Corpus

    corpus = Corpus.load(root / "data" / "corpus")
    texts = {r["id"]: r["text"] for r in corpus.read("labeled")}
    store = FeatureStore(root / "data" / "features" / up / "labeled")
    ids = (root / "data" / "subsets" / ids_file).read_text().split()
    return store, ids, texts


def test_bilstm_output_of_a_padded_sequence_equals_the_unpadded_one():
    torch.manual_seed(0)
    lstm = ds.BiLSTM(4, 5).eval()
    x = torch.randn(1, 6, 4)
    padded = torch.cat([x, torch.randn(1, 3, 4)], dim=1)
    alone = lstm(x, torch.tensor([6]))
    batched = lstm(padded, torch.tensor([6]))[:, :6]
    assert torch.allclose(alone, batched, atol=1e-6)


def test_the_old_budget_dependent_step_cap_is_refused_by_name():
    with pytest.raises(ParamsError, match="finetune.step_cap: unknown key"):
        tiny_params(step_cap={"ref_steps": 400})


def test_in_memory_features_equal_the_memory_mapped_ones(fixture_root):
    store, ids, texts = datasets(fixture_root)
    mapped = ds.FeatureDataset(store, ids, texts, layer=1)
    loaded = ds.FeatureDataset(store, ids, texts, layer=1, in_memory=True)
    for k in (0, 5, len(ids) - 1):
        assert torch.equal(mapped[k]["feats"], loaded[k]["feats"]) and loaded[k]["feats"].shape[1] == 1
        assert torch.equal(mapped[k]["target"], loaded[k]["target"])


@pytest.mark.parametrize("in_memory", [False, True])
def test_decoding_batches_in_float16_give_the_log_probs_of_float32_batches(fixture_root, in_memory):
    store, ids, texts = datasets(fixture_root)
    data = ds.FeatureDataset(store, ids, texts, in_memory=in_memory)
    idx = [3, 0, 7]  # lengths differ: padding
    feats, lengths = data.padded(idx)
    batch = ds.collate([data[k] for k in idx])
    assert feats.dtype == torch.float16 and torch.equal(lengths, batch["lengths"])
    assert torch.equal(feats.float(), batch["feats"])  # the padding is zero too
    torch.manual_seed(0)
    model = ds.DownstreamModel(section("finetune", hidden=8), num_layers=feats.shape[2], dim=store.dim,
                               input_rate=float(store.meta["frame_rate"])).eval()
    with torch.no_grad():
        assert torch.equal(model(feats, lengths)[0], model(batch["feats"], batch["lengths"])[0])


def test_fbank_frames_are_stacked_down_to_the_downstream_rate():
    cfg = section("finetune", hidden=8, upsample=2)
    model = ds.DownstreamModel(cfg, num_layers=1, dim=8, input_rate=100)
    log_probs, lens = model(torch.randn(2, 41, 1, 8), torch.tensor([41, 20]))
    assert model.stack == 4
    assert lens.tolist() == [22, 10]  # ceil(41 / 4) * 2, ceil(20 / 4) * 2
    assert log_probs.shape == (2, 22, len(CHAR_TO_ID))


def test_conv_blocks_and_an_lstm_free_head_keep_the_output_shape():
    cfg = section("finetune", dim=16, conv_blocks=2, lstm_layers=0, upsample=2)
    model = ds.DownstreamModel(cfg, num_layers=3, dim=8, input_rate=25)
    log_probs, lens = model(torch.randn(2, 10, 3, 8), torch.tensor([10, 7]))
    assert log_probs.shape == (2, 20, len(CHAR_TO_ID)) and lens.tolist() == [20, 14]
    model.eval()
    x = torch.randn(1, 7, 3, 8)
    alone, _ = model(x, torch.tensor([7]))
    padded, _ = model(torch.cat([x, torch.randn(1, 3, 3, 8)], dim=1), torch.tensor([7]))
    assert torch.allclose(alone, padded[:, :14], atol=1e-5)  # padding does not leak into valid frames


def test_a_few_training_steps_reduce_the_ctc_loss(fixture_root):
    torch.manual_seed(0)
    store, ids, texts = datasets(fixture_root)
    train_set = ds.FeatureDataset(store, ids[:8], texts)
    cfg = section("finetune", hidden=32, dropout=0.0)
    model = ds.DownstreamModel(cfg, store.num_layers, store.dim, store.meta["frame_rate"])
    model.set_stats(*ds.feature_stats(train_set, 100))
    batch = ds.collate([train_set[k] for k in range(8)])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def loss() -> torch.Tensor:
        lp, lens = model(batch["feats"], batch["lengths"])
        return ds.ctc_loss(lp, lens, batch["targets"], batch["target_lengths"])

    before = loss().item()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.7 * before


def test_the_model_overfits_a_tiny_set_and_decodes_non_blank(fixture_root):
    store, ids, texts = datasets(fixture_root)
    train_set = ds.FeatureDataset(store, ids[:12], texts)
    cfg = tiny_params(
        hidden=64, max_steps=200, eval_every=25, patience=100).finetune
    result = ds.train(cfg, train_set, train_set, texts, seed=0, verbose=False)
    assert result.left_blank_step is not None and not result.degenerate
    assert result.best_dev_cer < 0.35
    hyps = ds.transcribe(result.model, train_set)
    assert sum(len(h) for h in hyps.values()) > 0.5 * sum(len(texts[i]) for i in ids[:12])
    assert len(result.layer_weights) == store.num_layers and sum(result.layer_weights) == pytest.approx(1)


def test_early_stopping_counts_patience_only_after_the_all_blank_phase():
    stop = ds.BlankAwareStopping(patience=2, blank_exit=0.3)
    for step in range(10, 110, 10):  # all blank: dev CER flat at 1.0, nothing ever stops training
        assert stop.update(step, 1.0, output_share=0.0)[1] is False
    assert stop.update(110, 0.8, 0.4) == (True, False)  # leaves the blank phase, improves
    assert stop.left_blank_step == 110
    assert stop.update(120, 0.85, 0.5) == (False, False)
    assert stop.update(130, 0.81, 0.5) == (False, True)  # two evaluations without improvement
    assert (stop.best, stop.best_step) == (0.8, 110)


def test_improvements_smaller_than_min_delta_do_not_reset_patience():
    stop = ds.BlankAwareStopping(patience=2, blank_exit=0.3, min_delta=0.01)
    stop.update(10, 0.50, 0.9)
    assert stop.update(20, 0.495, 0.9) == (False, False)  # 0.005 better: noise, not progress
    assert stop.update(30, 0.492, 0.9) == (False, True)


def test_batches_cut_from_the_in_memory_block_train_the_same_model_as_the_dataloader(fixture_root):
    store, ids, texts = datasets(fixture_root)
    cfg = tiny_params(max_steps=20, eval_every=10).finetune
    results = [ds.train(cfg, ds.FeatureDataset(store, ids[:12], texts, in_memory=m),
                        ds.FeatureDataset(store, ids[12:16], texts), texts, seed=0, verbose=False)
               for m in (False, True)]
    assert [r.history for r in results[:1]] == [r.history for r in results[1:]]
    a, b = (r.model.state_dict() for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_stops_by_patience_on_a_dev_plateau(fixture_root):
    """Dev data the model cannot learn from (its texts shuffled against the features): dev CER plateaus once
    the model leaves the all-blank phase, and patience ends the run long before max_steps."""
    store, ids, texts = datasets(fixture_root)
    train_set = ds.FeatureDataset(store, ids[:12], texts)
    shuffled = dict(zip(ids, [texts[i] for i in ids[1:] + ids[:1]], strict=True))
    dev_set = ds.FeatureDataset(store, ids[12:20], shuffled)
    cfg = tiny_params(
        hidden=64, max_steps=2000, eval_every=10, patience=3).finetune
    result = ds.train(cfg, train_set, dev_set, shuffled, seed=0, verbose=False)
    assert result.stopped_early and result.stop_reason == "patience"
    assert result.steps < 600 and result.steps - result.best_step >= 3 * 10
    assert not result.degenerate


def test_nan_features_make_a_degenerate_run_that_stops_at_once(fixture_root):
    store, ids, texts = datasets(fixture_root)
    train_set = ds.FeatureDataset(store, ids[:8], texts, in_memory=True)
    train_set._block[:] = np.nan  # what a diverged upstream would have handed on
    cfg = tiny_params(max_steps=50, eval_every=10).finetune
    result = ds.train(cfg, train_set, ds.FeatureDataset(store, ids[8:12], texts), texts, seed=0, verbose=False)
    assert result.non_finite_loss and result.degenerate and result.left_blank_step is None
    assert result.steps < 10


def run_finetune(upstream: str = "small", budget: str = "1", **sections):
    """One finetune of the fixture, top-level params `sections` replaced whole."""
    return finetune_run(upstream, budget, parse_params({**tiny_raw(), **sections}))


def finetune_run(upstream: str, budget: str, p: Params) -> dict:
    key = RunKey.of(upstream, budget, 0)
    return finetune(key, p, Path("data/features") / upstream, Path("data/subsets"), Path("data/corpus"),
                    Path("models/finetune") / key.name)


def test_a_budget_without_features_is_named_before_training(workdir):
    ids = (workdir / "data/subsets/1min-seed0.txt").read_text() + "lab-999\n"
    (workdir / "data/subsets/1min-seed0.txt").write_text(ids)
    message = r"budget 1 min seed 0: 1 of 25 utterances have no features"
    with pytest.raises(ds.DownstreamInputError, match=message):
        run_finetune()
    assert not (workdir / "models").exists()


def test_an_upstream_without_features_is_named_before_training(workdir):
    with pytest.raises(ds.DownstreamInputError, match="upstream 'huge': no features"):
        run_finetune("huge")


def test_a_budget_not_in_the_subsets_is_named(workdir):
    with pytest.raises(ds.DownstreamInputError, match="budget 7 min seed 0.*does not exist"):
        run_finetune(budget="7")


def test_a_test_set_missing_from_the_features_is_named_before_training(workdir):
    shutil.rmtree(workdir / "data/features/small/test-beta")
    with pytest.raises(ds.DownstreamInputError, match="test-beta"):
        run_finetune()
    assert not (workdir / "models").exists()


def test_weights_naming_unknown_test_sets_fail_before_training(workdir):
    ev = tiny_raw()["evaluate"] | {"weights": {"alpha": 1, "gamma": 2}}
    with pytest.raises(MetricsError, match=r"do not exist: \['gamma'\].*without a weight: \['beta'\]"):
        run_finetune(evaluate=ev, corpus=own_tests(*TESTS, "gamma"))  # params that name a test set the corpus lacks
    assert not (workdir / "models").exists()


def test_a_layer_not_kept_by_extraction_is_named(workdir):
    with pytest.raises(ds.DownstreamInputError, match="layer 9 is not in the features"):
        run_finetune(finetune=tiny_raw(layer=9)["finetune"])


def test_finetune_evaluate_report_stages_run_end_to_end(workdir):
    p = tiny_params()
    for up in UPSTREAMS:
        for budget in ("0.5", "1"):
            name = finetune_run(up, budget, p) and RunKey.of(up, budget, 0).name
            evaluate(p, Path("models/finetune") / name, Path("data/features") / up, Path("data/corpus"),
                     Path("results/eval") / name)
    out = workdir / "results/eval/large-1-0"
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "hyps.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["test_set"] for r in rows} == set(TESTS)
    words = {t: sum(r["words"] for r in rows if r["test_set"] == t) for t in TESTS}
    errors = {t: sum(r["word_errors"] for r in rows if r["test_set"] == t) for t in TESTS}
    pooled = sum(errors.values()) / sum(words.values())
    assert metrics["weighted"]["wer"] == pytest.approx(pooled)  # word-count weights = pooled WER
    trained = json.loads((workdir / "models/finetune/large-1-0/train.json").read_text())
    assert trained["max_steps"] == 30 and len(trained["layer_weights"]) == 4
    assert trained["stop_reason"] in ("patience", "max_steps") and isinstance(trained["degenerate"], bool)
    assert set(trained["test_summary"]) == {f"test/{t}/{m}" for t in TESTS for m in ("wer", "cer")}
    result = make_report(p, Path("results/eval"), Path("models/pretrain"), Path("reports"))
    assert set(result["findings"]) == {"F0", "F1", "F2", "F3"}
    assert (workdir / "reports/sample_efficiency.csv").exists()
    assert (workdir / f"reports/figures/per_test_set_{result['judged_on']}.png").exists()


def test_finetune_writes_an_offline_wandb_run_with_test_scores_in_its_summary(workdir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_finetune("fbank", "0.5", upstreams={"fbank": tiny_raw()["upstreams"]["fbank"]}, profile="tiny",
                 report=tiny_raw()["report"] | dict.fromkeys(("smaller", "larger", "baseline", "control")))
    import wandb

    wandb.teardown()  # the W&B service writes the run file in the background; a stage process flushes at exit
    logs = list((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    # Offline runs keep the summary only in the run's binary log: its keys are stored as plain strings.
    data = logs[0].read_bytes()
    for key in (b"test/alpha/wer", b"test/beta/cer", b"dev/best_cer", b"budget_hours", b"finetune"):
        assert key in data
    from wandb_records import run_contents

    config = run_contents(logs[0])["config"]  # the keys a W&B workspace groups and filters finetunes by
    assert {k: config[k] for k in ("upstream", "kind", "size", "objective", "budget_minutes", "seed")} == {
        "upstream": "fbank", "kind": "fbank", "size": None, "objective": None, "budget_minutes": 0.5, "seed": 0}
    assert config["budget_hours"] == pytest.approx(0.5 / 60) and config["profile"] == "tiny" and "commit" in config
