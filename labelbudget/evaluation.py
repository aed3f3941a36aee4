"""One evaluation: decode every test set with a finetuned model and score it.

Writes `<out>/hyps.jsonl` (one line per utterance: test_set, id, ref, hyp (both normalised), word/char edit
counts) and `<out>/metrics.json` (the run's identity; per test set WER and CER with bootstrap intervals,
weighted WER and CER, the weights used; the training facts the report's diagnostics need) atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from labelbudget.io import atomic_dir, read_json, write_json, write_jsonl
from labelbudget.manifest import Corpus

if TYPE_CHECKING:
    from labelbudget.schema import Params

# Training facts carried into the evaluation, for the report's diagnostics table.
TRAIN_KEYS = ("best_dev_cer", "steps", "best_step", "max_steps", "stopped_early", "stop_reason", "degenerate",
              "left_blank_step", "layer_weights", "train_seconds", "seconds_per_step")


def evaluate(params: Params, model_dir: Path, features: Path, corpus_dir: Path, out: Path) -> dict:
    from labelbudget import downstream as ds
    from labelbudget.decoding import make_decoder
    from labelbudget.metrics import check_weights, score_run, utterance_counts
    from labelbudget.text import normalize

    p = params.evaluate
    corpus = Corpus.load(corpus_dir)
    check_weights(p.weights, corpus.tests)
    model, meta = ds.load_checkpoint(model_dir / "model.pt")
    decoder = make_decoder(p.decoder)
    stores = {}
    for t in corpus.tests:  # all test features checked before decoding any
        stores[t] = ds.open_part(features, corpus.test_part(t))
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
    scores = score_run(rows, p.weights, n_boot=p.bootstrap, ci=p.ci, seed=p.bootstrap_seed)
    train_info = read_json(model_dir / "train.json")
    minutes = float(meta["budget_minutes"])
    metrics = {"upstream": meta["upstream"], "budget_minutes": minutes, "hours": minutes / 60,
               "labeled_hours": meta.get("labeled_hours"), "seed": meta["seed"],
               "decoder": p.decoder.name,
               **{k: train_info.get(k) for k in TRAIN_KEYS}, **scores}
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "hyps.jsonl", rows)
        write_json(tmp / "metrics.json", metrics)
    per_test = "  ".join(f"{t} {v['wer']:.3f}/{v['cer']:.3f}" for t, v in scores["tests"].items())
    w = scores["weighted"]
    print(f"{out.name}: weighted WER {w['wer']:.3f} CER {w['cer']:.3f}  (WER/CER: {per_test})")
    return metrics
