"""Orchestration overhead when every stage is up to date (goals: `dvc repro` under 2 s, flow run under 15 s).

    python benchmarks/overhead.py           # a toy project shaped like the default experiment (68 stages)
    python benchmarks/overhead.py --root .  # this repository, once `dvc status` is clean

Prints the wall time of a no-op `dvc repro`, of the flow run itself, and of the whole command a user runs
(a fresh Python process: imports, Prefect's temporary server unless PREFECT_API_URL is set, the flow run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Bench, bench_args  # also puts tests/ (the toy project) on sys.path

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from prefect import flow
from labelbudget.orchestrate.flows import experiment
t1 = time.perf_counter()
flow(lambda: None, name="start-api")()  # the first flow run starts the temporary server (no PREFECT_API_URL)
t2 = time.perf_counter()
result = experiment(root=sys.argv[1])
t3 = time.perf_counter()
times = {"imports": t1 - t0, "api": t2 - t1, "flow": t3 - t2}
print("RESULT " + json.dumps({**times, "stages": result["stages"]}))
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return wall, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--root", type=Path, help="a DVC project whose stages are all up to date (default: a toy)"
    )
    ap.add_argument("--models", type=int, default=8, help="toy: models (like upstreams x seeds)")
    ap.add_argument("--budgets", type=int, default=4, help="toy: label budgets")
    args = bench_args(ap).parse_args()
    bench = Bench("overhead", args)
    dvc = [sys.executable, "-m", "dvc"]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }

    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect"))
        if args.root:
            root = args.root.resolve()
            status = subprocess.run([*dvc, "status", "--json"], cwd=root, capture_output=True, text=True)
            if status.returncode != 0 or json.loads(status.stdout or "{}"):
                sys.exit(
                    f"{root}: `dvc status` is not clean; reproduce the pipeline first (this would run it)"
                )
        else:
            from toy_project import create_toy_project

            models = [chr(ord("a") + i) for i in range(args.models)]
            root = create_toy_project(
                Path(tmp) / "toy", models=models, budgets=list(range(1, args.budgets + 1))
            )
            print(f"toy project: {len(models)} models x {args.budgets} budgets; reproducing it once ...")
            timed([*dvc, "repro", "-q"], root, {**env, "TOY_SLEEP": "0"})

        walls = bench.interleave({"dvc_repro": lambda: timed([*dvc, "repro"], root, env)[0]})["dvc_repro"]
        wall, output = timed([sys.executable, "-c", CHILD, str(root)], root, env)
        result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
        ran = [name for name, outcome in result["stages"].items() if outcome != "up to date"]
        if ran:
            sys.exit(f"not all stages were up to date: {', '.join(ran)}")
        server = "a running Prefect server" if os.environ.get("PREFECT_API_URL") else "the temporary server"
        print(f"{len(result['stages'])} stages, all up to date ({root})")
        median = statistics.median(walls)
        print(f"no-op `dvc repro`:            {median:5.2f} s  (median of {len(walls)}; goal <= 2 s)")
        print(f"flow run, all up to date:     {result['flow']:5.1f} s  (goal < 15 s)")
        print(
            f"whole command, fresh process: {wall:5.1f} s  (imports {result['imports']:.1f} s, {server} "
            f"{result['api']:.1f} s, flow run)"
        )
        where = "this repository" if args.root else f"a toy DAG ({args.models} models x {args.budgets} budgets)"
        bench.save({"noop_dvc_repro_s": round(median, 3), "flow_all_up_to_date_s": round(result["flow"], 2),
                    "whole_command_s": round(wall, 2), "stages": len(result["stages"])},
                   f"no-op `dvc repro` on {where}, {len(result['stages'])} stages: **{median:.2f} s** (median); "
                   f"all-cached flow run {result['flow']:.1f} s",
                   runs={"dvc_repro_s": [round(w, 3) for w in walls]})


if __name__ == "__main__":
    main()
