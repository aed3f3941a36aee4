"""The downstream head as a variable: the real `finetune` and `evaluate` stages, with some `finetune` params
changed, on a finished workspace's cached features (e.g. after `make calibration`, which has the topline), and
the report's per-budget comparisons on the result. The workspace is only read: each variant runs in its own
folder (`--out`/<name>) that holds its params.yaml and links to the workspace's data and pretraining.

    python benchmarks/head_study.py --workspace ../calib --name fr12 --set frame_rate=12.5 --set upsample=4
    python benchmarks/head_study.py --workspace ../calib --name fr12 --upstreams topline random --seeds 0

Prints, per run, weighted CER, best dev CER, steps and training seconds beside the workspace's own run of the
same key (the baseline head), and writes `<out>/<name>/study.json`. Two runs at a time, one thread each (as the
flow runs them on 2 cores). Results: benchmarks/results/sensitivity.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def variant_folder(workspace: Path, folder: Path, sets: list[str], grid: argparse.Namespace) -> dict:
    """`folder` with the workspace's params changed by `sets` (finetune keys) and the study's budgets and seeds
    (the report judges what ran, when every upstream ran), and links to what the stages read."""
    params = yaml.safe_load((grid.params or workspace / "params.yaml").read_text())
    params["subsets"]["budgets_min"] = [float(b) if "." in b else int(b) for b in grid.budgets]
    params["subsets"]["seeds"] = [int(s) for s in grid.seeds]
    for kv in sets:
        key, value = kv.split("=", 1)
        if key not in params["finetune"]:
            sys.exit(f"--set {kv}: {key!r} is not a key of params `finetune`")
        params["finetune"][key] = yaml.safe_load(value)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    for link, target in (("data/features", "data/features"), ("data/subsets", "data/subsets"),
                         ("data/corpus", "data/corpus"), ("models/pretrain", "models/pretrain"),
                         ("probe", "results/probe")):
        if not (folder / link).is_symlink():
            (folder / link).symlink_to((workspace / target).resolve())
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params["finetune"]


def run_one(folder: Path, run: str) -> dict:
    upstream, budget, seed = run.rsplit("-", 2)
    env = {**os.environ, "LABELBUDGET_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    start = time.time()
    with open(folder / f"log-{run}.txt", "w") as log:
        for cmd in ([sys.executable, str(REPO / "stages/finetune.py"), upstream, budget, seed,
                     "--out", f"finetune/{run}"],
                    [sys.executable, str(REPO / "stages/evaluate.py"), "--model", f"finetune/{run}",
                     "--features", f"data/features/{upstream}", "--out", f"eval/{run}"]):
            subprocess.run(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return {"run": run, "wall_s": round(time.time() - start, 1), **scores(folder / "eval" / run)}


def scores(eval_dir: Path) -> dict:
    m = json.loads((eval_dir / "metrics.json").read_text())
    return {"cer": m["weighted"]["cer"], "dev_cer": round(m["best_dev_cer"], 4), "steps": m["steps"],
            "train_s": round(m["train_seconds"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True, help="a workspace whose features are extracted")
    ap.add_argument("--name", required=True, help="the variant's name (its folder under --out)")
    ap.add_argument("--params", type=Path, help="params to start from (default: the workspace's); e.g. "
                    "`labelbudget profile calibration` output when the workspace predates a schema change")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a `finetune` param")
    ap.add_argument("--upstreams", nargs="+", default=["topline", "random", "small", "large", "fbank"])
    ap.add_argument("--budgets", nargs="+", default=["2", "6", "20", "60"])
    ap.add_argument("--seeds", nargs="+", default=["0"])
    ap.add_argument("--out", type=Path, default=Path("head_study"))
    args = ap.parse_args()
    folder = (args.out / args.name).resolve()
    finetune = variant_folder(args.workspace, folder, args.set, args)
    runs = [f"{u}-{b}-{s}" for u in args.upstreams for b in args.budgets for s in args.seeds]
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda r: run_one(folder, r), runs))
    report = subprocess.run([sys.executable, str(REPO / "stages/report.py"), "--eval", "eval", "--pretrain",
                             "models/pretrain", "--probe", "probe", "--out", "reports"], cwd=folder,
                            capture_output=True, text=True)
    comparisons = {}
    if report.returncode != 0:
        print(f"report: {report.stderr.strip().splitlines()[-1:]}")
    else:
        comparisons = json.loads((folder / "reports/metrics.json").read_text()).get("comparisons", {})
    print(f"{'run':16} {'baseline cer dev steps s':28} {args.name}")
    for row in rows:
        base = args.workspace / "results/eval" / row["run"]
        b = scores(base) if (base / "metrics.json").exists() else None
        fmt = "{cer:.3f} {dev_cer:.3f} {steps:5d} {train_s:5.0f}"
        print(f"{row['run']:16} {fmt.format(**b) if b else '-':28} {fmt.format(**row)}")
    for pair, verdicts in comparisons.items():
        print(f"{pair:20} {verdicts}")
    out = {"name": args.name, "set": args.set, "finetune": finetune, "runs": rows, "comparisons": comparisons}
    (folder / "study.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
