"""The downstream head as a variable: the real `finetune` and `evaluate` stages, with some `finetune` params
changed, on a finished workspace's cached features (e.g. after `make calibration`, which has the topline), and
the report's per-budget comparisons on the result. The workspace is only read: each variant runs in its own
folder (`--out`/<name>) that holds its params.yaml and links to the workspace's data and pretraining.

    python benchmarks/head_study.py --workspace ../calib --name fr12 --set frame_rate=12.5 --set upsample=4
    python benchmarks/head_study.py --workspace ../calib --name fr12 --upstreams topline random --seeds 0

Prints, per run, weighted CER, best dev CER, steps and training seconds beside the workspace's own run of the
same key (the baseline head), and writes `<out>/<name>/study.json`. The commands are dvc.yaml's, expanded as
benchmarks/run_stages.py does; two runs at a time, one thread each (as the flow runs them on 2 cores).
Results: benchmarks/results/sensitivity.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from run_stages import expand

from labelbudget.io import read_json, write_json
from labelbudget.runs import RunKey

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
    for link in ("data/features", "data/subsets", "data/corpus", "models/pretrain", "results/probe"):
        (folder / link).parent.mkdir(parents=True, exist_ok=True)
        if not (folder / link).is_symlink():
            (folder / link).symlink_to((workspace / link).resolve())
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def stage_commands(params: dict) -> dict[str, str]:
    """dvc.yaml's commands for these params (the repo's stage scripts, run from the variant's folder)."""
    stages = expand(yaml.safe_load((REPO / "dvc.yaml").read_text()), params)
    return {name: cmd.replace("python stages/", f"{sys.executable} {REPO}/stages/", 1) for name, cmd in stages}


def run(folder: Path, cmd: str, log: Path) -> int:
    env = {**os.environ, "LABELBUDGET_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    with open(log, "a") as out:
        return subprocess.run(cmd, shell=True, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def run_one(folder: Path, commands: dict[str, str], key: RunKey) -> dict:
    start = time.time()
    for stage in ("finetune", "evaluate"):
        if run(folder, commands[f"{stage}@{key.name}"], folder / f"log-{key.name}.txt"):
            sys.exit(f"{stage}@{key.name} failed: {folder}/log-{key.name}.txt")
    return {"run": key.name, "wall_s": round(time.time() - start, 1),
            **scores(folder / "results/eval" / key.name)}


def scores(eval_dir: Path) -> dict:
    m = read_json(eval_dir / "metrics.json")
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
    params = variant_folder(args.workspace, folder, args.set, args)
    commands = stage_commands(params)
    keys = [RunKey.of(u, b, s) for u in args.upstreams for b in args.budgets for s in args.seeds]
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda k: run_one(folder, commands, k), keys))
    comparisons = {}
    if run(folder, commands["report"], folder / "log-report.txt"):
        print(f"report: not written (every upstream's runs needed): {folder}/log-report.txt")
    else:
        comparisons = read_json(folder / "reports/metrics.json").get("comparisons", {})
    print(f"{'run':16} {'baseline cer dev steps s':28} {args.name}")
    for row in rows:
        base = args.workspace / "results/eval" / row["run"]
        b = scores(base) if (base / "metrics.json").exists() else None
        fmt = "{cer:.3f} {dev_cer:.3f} {steps:5d} {train_s:5.0f}"
        print(f"{row['run']:16} {fmt.format(**b) if b else '-':28} {fmt.format(**row)}")
    for pair, verdicts in comparisons.items():
        print(f"{pair:20} {verdicts}")
    out = {"name": args.name, "set": args.set, "finetune": params["finetune"], "runs": rows,
           "comparisons": comparisons}
    write_json(folder / "study.json", out)


if __name__ == "__main__":
    main()
