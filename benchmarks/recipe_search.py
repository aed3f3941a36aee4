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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labelbudget.schema import Params

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
    # Calibration, not SSL: the same recipe predicting each masked frame's true phone (the 100% of the scale).
    "topline": {"objective": "phones"},
    "topline-all-frames": {"objective": "phones", "unmasked_weight": 1.0},
    # Literature recipes (DESIGN.md, "Pretraining at small scale"), each beside the default recipe.
    "masked-only": {"reconstruction_weight": 0.0},
    "corrupt": {"reconstruction_weight": 0.0, "input_corruption": 0.8},
    "corrupt+head2": {"reconstruction_weight": 0.0, "input_corruption": 0.8, "head_layers": 2},
    "head2": {"reconstruction_weight": 0.0, "head_layers": 2},
    "infonce": {"reconstruction_weight": 0.0, "infonce_weight": 1.0},
    "visible": {"unmasked_weight": 1.0},  # the default recipe also predicting the visible frames' targets
    "visible+head2": {"unmasked_weight": 1.0, "head_layers": 2},
    "corrupt+infonce": {"reconstruction_weight": 0.0, "input_corruption": 0.8, "infonce_weight": 1.0},
    "corrupt+recon": {"input_corruption": 0.8},
    "corrupt+lr1e-3": {"reconstruction_weight": 0.0, "input_corruption": 0.8, "lr": 1e-3, "warmup_steps": 75},
    # HuBERT's second iteration with a never-trained teacher: k-means on its layer N (`kmeans_layer`)
    "teacher0": {"kmeans_layer": 0},
    "teacher2": {"kmeans_layer": 2},
    "teacher2+visible": {"kmeans_layer": 2, "unmasked_weight": 1.0},
    "teacher2+head2": {"kmeans_layer": 2, "head_layers": 2},
    "teacher2+corrupt": {"kmeans_layer": 2, "input_corruption": 0.8, "reconstruction_weight": 0.0},
    "corrupt+mask.5": {"reconstruction_weight": 0.0, "input_corruption": 0.8, "mask_prob": 0.2,
                       "mask_span": 4},
}


def corpus(work: Path, params: Params) -> Path:
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


def untrained(params: Params, size: str, monitor) -> float:
    import torch

    from labelbudget.encoder import Encoder, EncoderConfig

    torch.manual_seed(params.seed)
    enc = Encoder(EncoderConfig.from_params(params.models[size], params.features.n_mels))
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
    from labelbudget.schema import parse_params

    configure_threads()
    os.environ.setdefault("WANDB_MODE", "disabled")
    base = compose(ROOT, "default")
    base["wandb"]["mode"] = "disabled"
    typed = parse_params(base)
    corpus_dir = corpus(args.work, typed)
    p = typed.probe.pretrain
    monitor = PretrainingProbe(corpus_dir, args.every, p.utterances, p.max_iter, typed.seed)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    load = os.getloadavg()[0]
    key = f"{args.size}/untrained"
    results[key] = {"acc": untrained(typed, args.size, monitor), "commit": commit}
    print(f"{key}: {results[key]['acc']}", flush=True)
    for name in args.recipes:
        params = copy.deepcopy(base)
        params["pretrain"].update({k: v for k, v in RECIPES[name].items() if k != "model"})
        params["models"][args.size].update(RECIPES[name].get("model", {}))
        params["pretrain"].update({"max_steps": args.steps, "max_minutes": 60, "checkpoint_every": args.steps})
        out = args.work / "runs" / f"{args.size}-{name}-{args.steps}"
        t = time.time()
        summary = pretrain(args.size, parse_params(params), out, corpus_dir, monitor=monitor)
        curve = history(out)
        results[f"{args.size}/{name}/{args.steps}"] = {
            "overrides": RECIPES[name], "curve": curve, "best": max(a for _, a in curve),
            "masked_acc": summary.get("train/masked_acc"), "seconds": round(time.time() - t),
            "load_at_start": round(load, 2), "commit": commit}
        print(f"{args.size}/{name}: {curve} ({time.time() - t:.0f} s)", flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    floor = results[key]["acc"]
    tops = {k: r["best"] for k, r in results.items() if k.startswith(f"{args.size}/topline") and "curve" in r}
    top = max(tops.values(), default=None)
    print(f"\n| recipe | size | minutes | probe acc by update | best | vs untrained {floor} | share of gap |\n"
          "|---|---|---|---|---|---|---|")
    for k, r in results.items():
        if "curve" in r and k.startswith(args.size + "/"):
            share = f"{(r['best'] - floor) / (top - floor):.0%}" if top and top > floor else "n/a"
            print(f"| {k} | {args.size} | {r['seconds'] / 60:.1f} | {', '.join(f'{s}: {a}' for s, a in r['curve'])} "
                  f"| {r['best']} | {r['best'] - floor:+.3f} | {share} |")
    if top:
        print(f"share of gap: from the untrained encoder ({floor}) to the best topline recipe ({top})")


if __name__ == "__main__":
    main()
