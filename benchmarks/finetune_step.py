"""Finetuning in fp32 and under bf16 autocast: ms per optimizer step, interleaved (A B A B ...), with the real
`downstream.train` (Lightning) on the workspace's cached features; and (`--quality`) whole runs to early stopping
in both precisions on one label budget and two seeds, so the dev CER gap between precisions can be set against
the gap between seeds.

    python benchmarks/finetune_step.py --upstream large            # step time, 5 rounds
    python benchmarks/finetune_step.py --upstream large --quality  # + 4 runs to patience on the 20-minute budget
"""

from __future__ import annotations

import argparse
import time
from statistics import median
from typing import TYPE_CHECKING

import torch
from common import REPO, Bench, bench_args

from labelbudget import downstream as ds
from labelbudget.config import load_params
from labelbudget.featstore import FeatureStore
from labelbudget.manifest import Corpus

if TYPE_CHECKING:
    from labelbudget.schema import Finetune


def one_run(store: FeatureStore, train_ids: list[str], dev_ids: list[str], texts: dict[str, str],
            cfg: Finetune, seed: int = 0) -> ds.TrainResult:
    train_set = ds.FeatureDataset(store, train_ids, texts, in_memory=True)
    dev_set = ds.FeatureDataset(store, dev_ids, texts, in_memory=True)
    return ds.train(cfg, train_set, dev_set, texts, seed=seed, verbose=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", default="large", help="features under data/features/<upstream> (default large)")
    ap.add_argument("--utterances", type=int, default=400, help="labeled utterances to time steps on")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per timed round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the flow runs two 1-thread jobs)")
    ap.add_argument("--quality", action="store_true", help="also train to patience in both precisions")
    ap.add_argument("--budget", default="20", help="--quality: the label budget (minutes) to train on")
    args = bench_args(ap).parse_args()
    bench = Bench("finetune_step", args)
    torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    corpus = Corpus.load(REPO / "data" / "corpus")
    texts = {r["id"]: r["text"] for r in corpus.read(corpus.labeled)}
    store = FeatureStore(REPO / "data" / "features" / args.upstream / corpus.labeled)
    # a seeded sample: the store lists utterances by length, and its first ones would time only short batches
    pool = [i for i in store.ids if i in texts]
    ids = [pool[k] for k in torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[: args.utterances]]
    base = params.finetune.model_copy(update={"num_threads": args.threads})
    cfgs = {p: base.model_copy(update={"max_steps": args.steps, "eval_every": 10**9, "precision": p})
            for p in ("fp32", "bf16")}

    def timed(p: str):
        def run() -> float:
            return 1000 * one_run(store, ids[8:], ids[:8], texts, cfgs[p]).seconds_per_step
        return run

    ms = bench.interleave({"fp32": timed("fp32"), "bf16": timed("bf16")})
    speedup = median([a / b for a, b in zip(ms["fp32"], ms["bf16"], strict=True)])
    figures: dict = {"ms_per_step": {k: round(median(v), 1) for k, v in ms.items()}, "bf16_speedup": round(speedup, 3),
                     "threads": args.threads, "batch_size": cfgs["fp32"].batch_size, "steps_per_round": args.steps}
    print(f"  median ms/step: fp32 {median(ms['fp32']):.0f}, bf16 {median(ms['bf16']):.0f}: {speedup:.2f}x")
    headline = (f"finetune step ({args.upstream} features, {args.threads} thread): fp32 "
                f"{median(ms['fp32']):.0f} ms, bf16 {median(ms['bf16']):.0f} ms: **{speedup:.2f}x**")
    if args.quality:
        subsets = REPO / "data" / "subsets"
        dev_ids = subsets.joinpath("dev.txt").read_text().split()
        quality = {}
        for seed in (0, 1):
            train_ids = subsets.joinpath(f"{args.budget}min-seed{seed}.txt").read_text().split()
            for p in ("fp32", "bf16"):
                cfg = base.model_copy(update={"precision": p})
                t = time.perf_counter()
                r = one_run(store, train_ids, dev_ids, texts, cfg, seed)
                quality[f"{p}-seed{seed}"] = {"best_dev_cer": round(r.best_dev_cer, 4), "steps": r.steps,
                                              "stop_reason": r.stop_reason,
                                              "seconds": round(time.perf_counter() - t, 1)}
                print(f"  {p} seed {seed}: best dev CER {r.best_dev_cer:.4f} after {r.steps} steps "
                      f"({r.stop_reason}), {quality[f'{p}-seed{seed}']['seconds']:.0f} s", flush=True)
        gap_precision = median([abs(quality[f"bf16-seed{s}"]["best_dev_cer"] - quality[f"fp32-seed{s}"]["best_dev_cer"])
                                for s in (0, 1)])
        gap_seed = median([abs(quality[f"{p}-seed1"]["best_dev_cer"] - quality[f"{p}-seed0"]["best_dev_cer"])
                           for p in ("fp32", "bf16")])
        figures["quality"] = {"budget_min": args.budget, "runs": quality, "precision_gap": round(gap_precision, 4),
                              "seed_gap": round(gap_seed, 4)}
        print(f"  dev CER gap between precisions {gap_precision:.4f}, between seeds {gap_seed:.4f}")
        headline += (f"; {args.budget}-min runs to patience: dev CER gap bf16-fp32 {gap_precision:.3f} vs seed gap "
                     f"{gap_seed:.3f}")
    bench.save(figures, headline, runs={k: [round(x, 1) for x in v] for k, v in ms.items()},
               extra={"upstream": args.upstream, "utterances": len(ids) - 8})


if __name__ == "__main__":
    main()
