"""Run the stage commands of dvc.yaml in DAG order without DVC, timing each one.

For machines where DVC and Prefect are not installed (the lent GPU hosts): the same stage scripts with the
same arguments as `dvc repro`, in the file's stage order (which is topological), matrices expanded from
params.yaml. Stops at the first failing stage and says which. Writes `<out>/timings.csv`.

    python benchmarks/run_stages.py --out /tmp/run     # in a project directory holding params.yaml
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml


def lookup(params: dict, dotted: str):
    node = params
    for key in dotted.split("."):
        node = node[key]
    return node


def expand(dvc: dict, params: dict) -> list[tuple[str, str]]:
    """(stage name, command) in dvc.yaml order, `matrix` and `foreach` entries expanded like DVC does."""
    out = []
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:
            items = lookup(params, stage["foreach"][2:-1])
            pairs = items.items() if isinstance(items, dict) else ((str(v), v) for v in items)
            for key, item in pairs:
                cmd = stage["do"]["cmd"].replace("${key}", str(key))
                cmd = re.sub(r"\$\{item\.(\w+)\}", lambda m, item=item: str(item[m.group(1)]), cmd)
                out.append((f"{name}@{key}", cmd.replace("${item}", str(item))))
            continue
        matrix = stage.get("matrix")
        if not matrix:
            out.append((name, stage["cmd"]))
            continue
        # a dict axis iterates over its keys, as in DVC
        axes = {k: list(lookup(params, v[2:-1])) if isinstance(v, str) else v for k, v in matrix.items()}
        for combo in itertools.product(*axes.values()):
            item = dict(zip(axes, combo, strict=True))
            cmd = re.sub(r"\$\{item\.(\w+)\}", lambda m, item=item: str(item[m.group(1)]), stage["cmd"])
            out.append((f"{name}@{'-'.join(str(v) for v in combo)}", cmd))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=".", help="project directory (default: here)")
    ap.add_argument("--out", default="reports", help="where timings.csv goes (default: reports)")
    args = ap.parse_args()
    root = Path(args.project).resolve()
    stages = expand(yaml.safe_load((root / "dvc.yaml").read_text()),
                    yaml.safe_load((root / "params.yaml").read_text()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.time()
    for name, cmd in stages:
        start = time.time()
        print(f"== {name}: {cmd}", flush=True)
        proc = subprocess.run(cmd.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=root)
        rows.append({"stage": name, "start_s": round(start - t0, 1), "seconds": round(time.time() - start, 1),
                     "exit": proc.returncode})
        with open(out / "timings.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        if proc.returncode != 0:
            print(f"stage {name} failed (exit {proc.returncode}); later stages not run", flush=True)
            return proc.returncode
    print(f"all {len(rows)} stages in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
