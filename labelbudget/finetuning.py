"""One finetune run: the downstream CTC model on one label budget's cached features, every input checked first.

`finetune()` reads the features of one upstream, the budget's and the dev split's id lists and the corpus
manifests; trains; and writes `<out>/model.pt` (best dev-CER weights) and `<out>/train.json` (what the run is:
upstream, budget, seed; how it trained) atomically, plus one W&B run (job_type finetune) whose summary holds
per-test-set WER and CER.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from labelbudget.io import atomic_dir, write_json
from labelbudget.manifest import Corpus
from labelbudget.runs import RunKey

if TYPE_CHECKING:
    from labelbudget.schema import Params


def read_ids(path: Path, what: str) -> list[str]:
    from labelbudget.downstream import DownstreamInputError

    if not path.exists():
        raise DownstreamInputError(f"{what}: {path} does not exist; run the `subsets` stage (is the budget "
                                   "in params subsets.budgets_min?)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def checked_inputs(key: RunKey, params: Params, features: Path, subsets: Path, corpus: Corpus) -> tuple:
    """(labeled features, budget ids, dev ids, {test set: (features, rows)}): every input checked before any
    training, each problem named."""
    from labelbudget import downstream as ds
    from labelbudget.metrics import check_weights

    if not features.is_dir():
        raise ds.DownstreamInputError(f"upstream {key.upstream!r}: no features at {features}; run "
                                      f"`extract@{key.upstream}`")
    labeled = ds.open_part(features, corpus.labeled)
    what = f"budget {key.budget} min seed {key.seed}"
    train_ids = read_ids(subsets / key.subset_file, what)
    dev_ids = read_ids(subsets / "dev.txt", "dev split")
    ds.check_ids(labeled, train_ids, what)
    ds.check_ids(labeled, dev_ids, "dev split")
    tests = {}
    for name in corpus.tests:
        store = ds.open_part(features, corpus.test_part(name))
        ds.check_compatible(labeled, store)
        rows = corpus.read(corpus.test_part(name))
        ds.check_ids(store, [r["id"] for r in rows], f"test set {name!r}")
        tests[name] = (store, rows)
    # Weights do not change training (so they are not a param of this stage), but a mismatch must stop the
    # pipeline before hours of training, not at evaluation.
    check_weights(params.evaluate.weights, corpus.tests)
    return labeled, train_ids, dev_ids, tests


def run_summary(result, tests: dict, layer: int) -> dict[str, float]:
    """The run's W&B summary: dev CER, steps, WER/CER per test set (the `evaluate` stage writes the full
    evaluation) and the learned layer weights."""
    from labelbudget import downstream as ds
    from labelbudget.metrics import corpus_scores

    summary = {"dev/best_cer": result.best_dev_cer, "steps": result.steps, "best_step": result.best_step}
    for tname, (store, rows) in tests.items():
        hyps = ds.transcribe(result.model, ds.FeatureDataset(store, [r["id"] for r in rows], layer=layer))
        s = corpus_scores([r["text"] for r in rows], [hyps[r["id"]] for r in rows], tname)
        summary[f"test/{tname}/wer"], summary[f"test/{tname}/cer"] = s["wer"], s["cer"]
    summary.update({f"layer_weight/{k}": w for k, w in enumerate(result.layer_weights)})
    return summary


def finetune(key: RunKey, params: Params, features: Path, subsets: Path, corpus_dir: Path, out: Path) -> dict:
    from labelbudget import downstream as ds
    from labelbudget import tracking

    cfg = params.finetune
    corpus = Corpus.load(corpus_dir)
    texts = {r["id"]: r["text"] for r in corpus.read(corpus.labeled)}
    labeled, train_ids, dev_ids, tests = checked_inputs(key, params, features, subsets, corpus)
    layer = ds.layer_index(labeled, cfg.layer)
    train_set = ds.FeatureDataset(labeled, train_ids, texts, layer, in_memory=True)
    dev_set = ds.FeatureDataset(labeled, dev_ids, texts, layer, in_memory=True)
    in_budget = set(train_ids)
    hours = sum(r["duration"] for r in corpus.read(corpus.labeled) if r["id"] in in_budget) / 3600
    config = {**key.as_dict(), "budget_hours": key.minutes / 60, "labeled_hours": hours,
              "utterances": len(train_ids), "max_steps": cfg.max_steps, "downstream": cfg.model_dump()}
    # the grouping keys (commit, profile) go to W&B only: the checkpoint's meta stays a function of the inputs
    run = tracking.init_run(params.wandb, job_type="finetune", name=key.name,
                            config={**tracking.group_keys(params, key.upstream), **config})
    try:
        result = ds.train(cfg, train_set, dev_set, texts, key.seed, logger=tracking.lightning_logger(run))
        summary = run_summary(result, tests, layer)
        tracking.set_summary(run, summary)
    finally:
        tracking.finish(run)

    meta = {**config, "layer_index": layer, "features_layers": labeled.meta["layers"],
            "features_meta": {k: labeled.meta.get(k) for k in ("upstream", "checkpoint_sha256",
                                                                "frame_rate", "compute")}}
    info = {**meta, "steps": result.steps, "best_step": result.best_step, "best_dev_cer": result.best_dev_cer,
            "left_blank_step": result.left_blank_step, "stopped_early": result.stopped_early,
            "stop_reason": result.stop_reason, "degenerate": result.degenerate,
            "non_finite_loss": result.non_finite_loss,
            "train_seconds": result.seconds, "seconds_per_step": result.seconds_per_step,
            "layer_weights": result.layer_weights, "history": result.history,
            "test_summary": {k: v for k, v in summary.items() if k.startswith("test/")}}
    with atomic_dir(out) as tmp:
        ds.save_checkpoint(tmp / "model.pt", result.model, meta)
        write_json(tmp / "train.json", info)
    print(f"{key.name}: {result.steps} steps (max {result.max_steps}) in {result.seconds:.1f} s "
          f"({result.seconds_per_step * 1000:.0f} ms/step), best dev CER {result.best_dev_cer:.3f} "
          f"at step {result.best_step}, stopped by {result.stop_reason}"
          f"{'; DEGENERATE (never left the all-blank phase)' if result.degenerate else ''}")
    return info
