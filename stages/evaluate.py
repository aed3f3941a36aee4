"""Stage `evaluate@upstream-budget-seed`: decode every test set with one finetuned model and score it.

Writes results/eval/<upstream>-<budget>-<seed>/ atomically:
  hyps.jsonl    one line per utterance: test_set, id, ref, hyp (both normalised), word/char edit counts
  metrics.json  per test set WER and CER with bootstrap intervals, weighted WER and CER, the weights used
"""

from __future__ import annotations

import argparse
from pathlib import Path

from labelbudget.config import configure_threads, load_params
from labelbudget.io import atomic_dir, read_json, write_json, write_jsonl
from labelbudget.manifest import Corpus

FEATURES = Path("data/features")
CORPUS = Path("data/corpus")
MODELS = Path("models/finetune")
OUT = Path("results/eval")
# Training facts carried into the evaluation, for the report's diagnostics table.
TRAIN_KEYS = ("best_dev_cer", "steps", "best_step", "max_steps", "stopped_early", "stop_reason", "degenerate",
              "left_blank_step", "layer_weights", "train_seconds", "seconds_per_step")


def run(upstream: str, budget: str, seed: int, params: dict) -> Path:
    from labelbudget import downstream as ds
    from labelbudget.decoding import make_decoder
    from labelbudget.metrics import check_weights, score_run, utterance_counts
    from labelbudget.text import normalize

    p = params["evaluate"]
    name = f"{upstream}-{budget}-{seed}"
    corpus = Corpus.load(CORPUS)
    check_weights(p.get("weights"), corpus.tests)
    model, meta = ds.load_checkpoint(MODELS / name / "model.pt")
    decoder = make_decoder(p.get("decoder", "greedy"))
    root = FEATURES / upstream
    stores = {}
    for t in corpus.tests:  # all test features checked before decoding any
        stores[t] = ds.open_part(root, corpus.test_part(t))
        ds.check_ids(stores[t], [r["id"] for r in corpus.read(corpus.test_part(t))], f"test set {t!r}")
        if stores[t].meta.get("layers") != meta["features_layers"]:
            raise ds.DownstreamInputError(f"{stores[t].dir}: layers {stores[t].meta.get('layers')} differ "
                                          f"from the model's training features ({meta['features_layers']})")
    rows = []
    for t in corpus.tests:
        manifest = corpus.read(corpus.test_part(t))
        ids = [r["id"] for r in manifest]
        hyps = ds.transcribe(model, ds.FeatureDataset(stores[t], ids, layer=meta["layer_index"]), decoder)
        refs = [r["text"] for r in manifest]
        counts = utterance_counts(refs, [hyps[i] for i in ids])
        for uid, ref, c in zip(ids, refs, counts, strict=True):
            rows.append({"test_set": t, "id": uid, "ref": normalize(ref), "hyp": hyps[uid], **c.as_dict()})
    scores = score_run(rows, p.get("weights"), n_boot=int(p.get("bootstrap", 1000)),
                       ci=float(p.get("ci", 0.95)), seed=int(p.get("bootstrap_seed", 0)))
    train_info = read_json(MODELS / name / "train.json")
    metrics = {"upstream": upstream, "budget_minutes": float(budget), "hours": float(budget) / 60,
               "labeled_hours": meta.get("labeled_hours"), "seed": seed,
               "decoder": p.get("decoder", "greedy"),
               **{k: train_info.get(k) for k in TRAIN_KEYS}, **scores}
    out = OUT / name
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "hyps.jsonl", rows)
        write_json(tmp / "metrics.json", metrics)
    per_test = "  ".join(f"{t} {v['wer']:.3f}/{v['cer']:.3f}" for t, v in scores["tests"].items())
    w = scores["weighted"]
    print(f"{name}: weighted WER {w['wer']:.3f} CER {w['cer']:.3f}  (WER/CER: {per_test})")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("upstream", help="an entry of params `upstreams`")
    parser.add_argument("budget", help="label budget in minutes, as in the finetune stage")
    parser.add_argument("seed", type=int, help="subset seed")
    args = parser.parse_args(argv)
    configure_threads()
    run(args.upstream, args.budget, args.seed, load_params())


if __name__ == "__main__":
    main()
