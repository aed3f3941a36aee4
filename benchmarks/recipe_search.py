"""Recipe search on the phone probe: pretrain one encoder size on the default corpus with each recipe and
record the probe's held-out phone accuracy (best layer) every `--every` updates, beside the same encoder never
trained. A recipe is a set of overrides of params `pretrain` (and `models.<size>`); minutes per try, not the
hour a full finetune matrix takes.

    python benchmarks/recipe_search.py --work /tmp/recipe-search --size small --steps 400 --every 100
    python benchmarks/recipe_search.py --recipes default lr5e-4 recon     # a subset

Writes benchmarks/results/recipe_search.json (every curve) and prints a markdown table; see recipe_search.md.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> overrides of params `pretrain` (and `model` for the encoder shape)
RECIPES: dict[str, dict] = {
    "default": {},
    "lr5e-4": {"lr": 5e-4, "warmup_steps": 100},
    "recon": {"reconstruction_weight": 1.0},
    "lr5e-4+recon": {"lr": 5e-4, "warmup_steps": 100, "reconstruction_weight": 1.0},
    "hubert+lr5e-4+recon": {"objective": "hubert", "lr": 5e-4, "warmup_steps": 100, "reconstruction_weight": 1.0},
    "lr2e-4+recon": {"lr": 2e-4, "warmup_steps": 100, "reconstruction_weight": 1.0},
    "hubert+lr5e-4": {"objective": "hubert", "lr": 5e-4, "warmup_steps": 100},
    "hubert+lr1e-3+recon": {"objective": "hubert", "lr": 1e-3, "warmup_steps": 150, "reconstruction_weight": 1.0},
    "hubert+lr5e-4+recon+short": {"objective": "hubert", "lr": 5e-4, "warmup_steps": 100,
                                  "reconstruction_weight": 1.0, "batch_seconds": 12},
}


def corpus(work: Path, params: dict) -> Path:
    """The default profile's corpus, synthesized once into `work`."""
    from labelbudget.sources import prepare

    out = work / "data" / "corpus"
    if not (out / "corpus.json").exists():
        t = time.time()
        prepare(params, out)
        print(f"corpus synthesized in {time.time() - t:.0f} s", flush=True)
    return out


def history(out: Path) -> list[tuple[int, float]]:
    with open(out / "history.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("probe/phone_acc")]
    return [(int(float(r["step"])), round(float(r["probe/phone_acc"]), 4)) for r in rows]


def untrained(params: dict, size: str, monitor) -> float:
    import torch

    from labelbudget.encoder import Encoder, EncoderConfig

    torch.manual_seed(params["seed"])
    enc = Encoder(EncoderConfig.from_params(params["models"][size], params["features"]["n_mels"]))
    return round(monitor(enc)["probe/phone_acc"], 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/recipe-search"))
    ap.add_argument("--size", default="small")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recipe_search.json")
    args = ap.parse_args()
    from labelbudget.config import configure_threads
    from labelbudget.pretraining import pretrain
    from labelbudget.probe import PretrainingProbe
    from labelbudget.profiles import compose

    configure_threads()
    os.environ.setdefault("WANDB_MODE", "disabled")
    base = compose(ROOT, "default")
    base["wandb"]["mode"] = "disabled"
    corpus_dir = corpus(args.work, base)
    p = base["probe"]["pretrain"]
    monitor = PretrainingProbe(corpus_dir, args.every, int(p["utterances"]), int(p["max_iter"]), base["seed"])
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    load = os.getloadavg()[0]
    key = f"{args.size}/untrained"
    results[key] = {"acc": untrained(base, args.size, monitor), "commit": commit}
    print(f"{key}: {results[key]['acc']}", flush=True)
    for name in args.recipes:
        params = copy.deepcopy(base)
        params["pretrain"].update({k: v for k, v in RECIPES[name].items() if k != "model"})
        params["models"][args.size].update(RECIPES[name].get("model", {}))
        params["pretrain"].update({"max_steps": args.steps, "max_minutes": 60, "checkpoint_every": args.steps})
        out = args.work / "runs" / f"{args.size}-{name}-{args.steps}"
        t = time.time()
        summary = pretrain(args.size, params, out, corpus_dir, monitor=monitor)
        curve = history(out)
        results[f"{args.size}/{name}/{args.steps}"] = {
            "overrides": RECIPES[name], "curve": curve, "best": max(a for _, a in curve),
            "masked_acc": summary.get("train/masked_acc"), "seconds": round(time.time() - t),
            "load_at_start": round(load, 2), "commit": commit}
        print(f"{args.size}/{name}: {curve} ({time.time() - t:.0f} s)", flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n| recipe | probe acc by update | best | vs untrained {results[key]['acc']} |\n|---|---|---|---|")
    for k, r in results.items():
        if "curve" in r and k.startswith(args.size + "/"):
            print(f"| {k} | {', '.join(f'{s}: {a}' for s, a in r['curve'])} | {r['best']} | "
                  f"{r['best'] - results[key]['acc']:+.3f} |")


if __name__ == "__main__":
    main()
