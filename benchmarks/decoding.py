"""Decoding every test set with a finetuned downstream model, as the `evaluate` stage and the finetune summary do:
batches in float16 as stored (`FeatureDataset.padded`, the product) against float32 item copies padded by
`collate` (the path before 2026-12-07), interleaved. The log-probs are identical (tests/test_downstream.py); only
the batch assembly differs.

    python benchmarks/decoding.py --workspace ../run --run large-20-0   # after a default run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import median

import torch
from common import REPO, Bench, bench_args

from labelbudget import downstream as ds
from labelbudget.decoders.greedy import GreedyDecoder
from labelbudget.downstream.data import sorted_batches
from labelbudget.manifest import Corpus


@torch.inference_mode()
def decode_float32(model: ds.DownstreamModel, data: ds.FeatureDataset, batch_size: int = 32) -> dict[str, str]:
    """The earlier batching: every item copied to float32, then padded into a float32 batch."""
    out, decoder = {}, GreedyDecoder()
    for idx in sorted_batches(data.lengths, batch_size):
        batch = ds.collate([data[k] for k in idx])
        log_probs, lens = model(batch["feats"], batch["lengths"])
        out.update(zip(batch["ids"], decoder.decode(log_probs, lens), strict=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=REPO, help="a workspace with features and finetuned models")
    ap.add_argument("--run", default="large-20-0", help="a finetune run under models/finetune (its upstream's "
                    "test-set features are decoded)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the flow runs 1-thread stages)")
    args = bench_args(ap).parse_args()
    bench = Bench("decoding", args)
    torch.set_num_threads(args.threads)
    ws = args.workspace
    model, meta = ds.load_checkpoint(ws / "models" / "finetune" / args.run / "model.pt")
    corpus = Corpus.load(ws / "data" / "corpus")
    upstream = meta["upstream"]  # the run names it in its checkpoint (labelbudget.finetuning)
    sets = [ds.FeatureDataset(ds.open_part(ws / "data" / "features" / upstream, corpus.test_part(t)),
                              [r["id"] for r in corpus.read(corpus.test_part(t))]) for t in corpus.tests]
    utterances = sum(len(s) for s in sets)

    def timed(fn):
        def run() -> float:
            t = time.perf_counter()
            for data in sets:
                fn(model, data)
            return time.perf_counter() - t
        return run

    assert all(decode_float32(model, s) == ds.transcribe(model, s) for s in sets), "the two paths disagree"
    s = bench.interleave({"float32": timed(decode_float32), "float16": timed(ds.transcribe)})
    speedup = median([a / b for a, b in zip(s["float32"], s["float16"], strict=True)])
    figures = {"seconds": {k: round(median(v), 3) for k, v in s.items()}, "speedup": round(speedup, 3),
               "utterances": utterances, "test_sets": len(sets), "run": args.run, "threads": args.threads}
    headline = (f"decoding {len(sets)} test sets ({utterances} utterances, {args.run}, {args.threads} thread): "
                f"float32 batches {median(s['float32']):.2f} s, float16 {median(s['float16']):.2f} s: "
                f"**{speedup:.2f}x**")
    bench.save(figures, headline, runs=s)


if __name__ == "__main__":
    main()
