"""What a stage process costs besides its work: one finetune and one evaluate stage script run in a fresh
interpreter (the path before 2026-12-07) and handed to the fork server (labelbudget.forkserver, what the flow now
does), interleaved. Fixed cost = wall time of the script minus the training seconds it reports; the trained
models are compared bit for bit.

    python benchmarks/forkserver.py --workspace ../run --run small-2-0   # after a default run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from common import REPO, Bench, bench_args

from labelbudget import forkserver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=REPO, help="a workspace with features and subsets")
    ap.add_argument("--run", default="small-2-0", help="<upstream>-<budget>-<seed> to finetune and evaluate")
    args = bench_args(ap).parse_args()
    bench = Bench("forkserver", args)
    upstream, budget, seed = args.run.rsplit("-", 2)
    ws, out = args.workspace, Path(tempfile.mkdtemp(prefix="forkserver-bench-"))
    env = {**os.environ, "LABELBUDGET_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop(forkserver.ADDRESS_VAR, None)

    def stage(kind: str, address: str | None) -> dict[str, float]:
        e = {**env, **({forkserver.ADDRESS_VAR: address} if address else {})}
        model = out / kind / "model"
        cmds = {"finetune": ["stages/finetune.py", upstream, budget, seed, "--out", str(model)],
                "evaluate": ["stages/evaluate.py", "--model", str(model), "--features",
                             f"data/features/{upstream}", "--out", str(out / kind / "eval")]}
        times = {}
        for name, cmd in cmds.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, *cmd], cwd=ws, env=e, check=True, capture_output=True)
            times[name] = time.perf_counter() - t
        train = json.loads((model / "train.json").read_text())["train_seconds"]
        return {"finetune_fixed": times["finetune"] - train, "evaluate": times["evaluate"], "train": train}

    with forkserver.serving(out / "server.log") as address:
        while not os.path.exists(address):  # its preload done
            time.sleep(0.1)
        rows: dict[str, list[dict]] = {"fresh": [], "forked": []}
        bench.interleave({"fresh": lambda: _keep(rows["fresh"], stage("fresh", None)),
                          "forked": lambda: _keep(rows["forked"], stage("forked", address))})
    a = torch.load(out / "fresh" / "model" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "forked" / "model" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the two paths trained apart"
    figures = {k: {m: round(median(r[m] for r in v), 2) for m in ("finetune_fixed", "evaluate", "train")}
               for k, v in rows.items()}
    saved = {m: round(figures["fresh"][m] - figures["forked"][m], 2) for m in ("finetune_fixed", "evaluate")}
    figures.update({"seconds_saved": saved, "run": args.run, "identical_models": True})
    fresh, forked = figures["fresh"], figures["forked"]
    headline = (f"stage process cost ({args.run}, 1 thread): finetune fixed cost {fresh['finetune_fixed']:.1f} s "
                f"fresh, {forked['finetune_fixed']:.1f} s forked; evaluate "
                f"{fresh['evaluate']:.1f} s fresh, {forked['evaluate']:.1f} s forked; training "
                f"{fresh['train']:.1f} s fresh, {forked['train']:.1f} s forked; identical models")
    bench.save(figures, headline, runs=rows)


def _keep(rows: list[dict], row: dict) -> float:
    rows.append(row)
    return row["finetune_fixed"] + row["evaluate"]


if __name__ == "__main__":
    main()
