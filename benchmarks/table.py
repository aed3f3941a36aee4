"""Render the README's benchmark table from `benchmarks/results/*.json` (the files the benchmarks write).

    python benchmarks/table.py           # rewrite the table in README.md
    python benchmarks/table.py --check   # exit 1 if README.md's table is not what the result files say
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- benchmark-table:begin (python benchmarks/table.py) -->", "<!-- benchmark-table:end -->"


def render(results: Path = REPO / "benchmarks" / "results") -> str:
    rows = ["| Benchmark | Figure | Commit, date | Load per core at start | Command |", "|---|---|---|---|---|"]
    for path in sorted(results.glob("*.json")):
        r = json.loads(path.read_text())
        if "headline" not in r:  # files of older benchmarks, without the idle-machine protocol
            continue
        load = f"{r['load_per_core_start']:.2f}" + (" (**under load**)" if r.get("under_load") else "")
        rows.append(f"| {r['benchmark']} | {r['headline']} | {r['commit']}, {r['date']} | {load} | "
                    f"`{r['command']}` |")
    return "\n".join(rows)


def replace_table(readme: str, table: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    readme = REPO / "README.md"
    text = readme.read_text()
    new = replace_table(text, render())
    if args.check:
        if new != text:
            sys.exit("README.md's benchmark table differs from benchmarks/results: run python benchmarks/table.py")
        return
    readme.write_text(new)


if __name__ == "__main__":
    main()
