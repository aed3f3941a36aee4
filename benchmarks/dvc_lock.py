"""What DVC's dvc.lock rewrite costs a stage, with DVC's own pure-Python round trip and with the C writer the flow
uses (`labelbudget.dvcapi.fast_lockfile_writes`), interleaved, on the dvc.lock of a finished default run.

    python benchmarks/dvc_lock.py --workspace ../run --stage evaluate@small-2-0   # after a default run

Two figures: the lock's rewrite alone (parse and dump in this process, as `dvc repro -s` does after every stage),
and a whole `dvc repro -s -f <stage>` through each path. The workspace's dvc.lock is put back after every run and
each path's result is checked to hold the same values as DVC's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

from common import REPO, Bench, bench_args

from labelbudget import dvcapi


def rewrite_seconds(text: str, fast: bool) -> float:
    """One parse and dump of dvc.lock, as DVC makes it after a stage."""
    t = time.perf_counter()
    if fast:
        dvcapi.dump_lock(dvcapi.load_lock(text))
    else:
        dvcapi.dumps_yaml(dvcapi.parse_yaml_for_update(text, "dvc.lock"))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True, help="a workspace after a default run")
    ap.add_argument("--stage", default="evaluate@small-2-0", help="the stage `dvc repro -s -f` runs")
    args = bench_args(ap).parse_args()
    bench = Bench("dvc_lock", args)
    lock = args.workspace / "dvc.lock"
    saved = lock.with_name("dvc.lock.bench")
    shutil.copyfile(lock, saved)
    text = saved.read_text()
    values = dvcapi.parse_yaml(text, "dvc.lock")
    rewrite = bench.interleave({"dvc": lambda: rewrite_seconds(text, False),
                                "c": lambda: rewrite_seconds(text, True)}, label="rewrite ")

    def repro(fast: bool) -> float:
        # this checkout's dvcapi, whatever the workspace's commit (`-m` would import the workspace's own)
        cli = f"import sys; sys.path.insert(0, {str(REPO)!r}); from labelbudget.dvcapi import main; " + (
            "sys.exit(main(sys.argv[1:]))" if fast else "from dvc.cli import main as dvc; sys.exit(dvc(sys.argv[1:]))")
        before = lock.stat().st_mtime_ns
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", cli, "repro", "-s", "-f", args.stage], cwd=args.workspace,
                       check=True, capture_output=True)
        seconds = time.perf_counter() - t
        assert lock.stat().st_mtime_ns != before, "dvc.lock was not rewritten"
        assert dvcapi.parse_yaml(lock.read_text(), "dvc.lock") == values, "dvc.lock's values changed"
        shutil.copyfile(saved, lock)
        return seconds

    try:
        stage = bench.interleave({"dvc": lambda: repro(False), "c": lambda: repro(True)}, label="repro ")
    finally:
        shutil.copyfile(saved, lock)
        saved.unlink()
    figures = {"lock_lines": text.count("\n"), "stages_in_lock": len(values.get("stages", {})),
               "rewrite_s": {k: round(median(v), 3) for k, v in rewrite.items()},
               "repro_s": {k: round(median(v), 2) for k, v in stage.items()}, "stage": args.stage}
    figures["repro_saved_s"] = round(median(a - b for a, b in zip(stage["dvc"], stage["c"], strict=True)), 2)
    r, s = figures["rewrite_s"], figures["repro_s"]
    headline = (f"dvc.lock of {figures['stages_in_lock']} stages ({figures['lock_lines']} lines): rewrite "
                f"{r['dvc']:.2f} s with DVC's round trip, {r['c']:.2f} s in C; `dvc repro -s -f {args.stage}` "
                f"{s['dvc']:.2f} s against {s['c']:.2f} s ({figures['repro_saved_s']:.2f} s less a stage)")
    bench.save(figures, headline, runs={"rewrite": rewrite, "repro": stage})


if __name__ == "__main__":
    main()
