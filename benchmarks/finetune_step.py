"""Finetuning speed: ms per optimizer step with features read from memory maps per item (the old input path)
against features loaded once into memory (`FeatureDataset(in_memory=True)`, what the finetune stage uses).

Runs the real `downstream.train` (Lightning) on cached features of the workspace, baseline and candidate
interleaved (A B A B ...), and prints the median of each and their ratio with the load average.

    python benchmarks/finetune_step.py --upstream large --steps 60 --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from labelbudget import downstream as ds
from labelbudget.config import load_params
from labelbudget.featstore import FeatureStore
from labelbudget.manifest import Corpus

REPO = Path(__file__).resolve().parent.parent


def one_run(store: FeatureStore, ids: list[str], texts: dict[str, str], cfg: ds.DownstreamConfig,
            in_memory: bool) -> dict:
    t0 = time.perf_counter()
    train_set = ds.FeatureDataset(store, ids[8:], texts, in_memory=in_memory)
    dev_set = ds.FeatureDataset(store, ids[:8], texts, in_memory=in_memory)
    load = time.perf_counter() - t0
    result = ds.train(cfg, train_set, dev_set, texts, seed=0, verbose=False)
    return {"ms_per_step": 1000 * result.seconds_per_step, "load_s": load, "steps": result.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", default="large", help="features under data/features/<upstream> (default large)")
    ap.add_argument("--utterances", type=int, default=400, help="labeled utterances to train on (default 400)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "finetune_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    corpus = Corpus.load(REPO / "data" / "corpus")
    texts = {r["id"]: r["text"] for r in corpus.read(corpus.labeled)}
    store = FeatureStore(REPO / "data" / "features" / args.upstream / corpus.labeled)
    ids = [i for i in store.ids if i in texts][: args.utterances]
    cfg = ds.DownstreamConfig.from_params({**params["finetune"], "max_steps": args.steps,
                                           "eval_every": 10**9, "num_threads": args.threads})
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f} ({os.cpu_count()} cores)"
          + ("  ** under load: figures not comparable **" if load > 0.5 * (os.cpu_count() or 1) else ""))
    runs: dict[str, list[dict]] = {"memmap": [], "in_memory": []}
    for k in range(args.pairs):
        for name in runs:
            r = one_run(store, ids, texts, cfg, in_memory=name == "in_memory")
            runs[name].append(r)
            print(f"pair {k} {name:9s}: {r['ms_per_step']:.0f} ms/step (load {r['load_s']:.2f} s)", flush=True)
    med = {n: statistics.median(r["ms_per_step"] for r in rs) for n, rs in runs.items()}
    print(f"median ms/step: memmap {med['memmap']:.0f}, in memory {med['in_memory']:.0f}: "
          f"{med['memmap'] / med['in_memory']:.2f}x")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    Path(args.out).write_text(json.dumps({
        "benchmark": "finetune_step", "commit": commit, "upstream": args.upstream, "threads": args.threads,
        "batch_size": cfg.batch_size, "utterances": len(ids) - 8, "steps": args.steps, "load_average": load,
        "median_ms_per_step": med, "speedup": med["memmap"] / med["in_memory"], "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
