"""Stage `subsets`: a dev split plus nested random label budgets (id lists) for every budget and seed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelbudget.config import load_params
from labelbudget.errors import run_stage
from labelbudget.subsets import write_subsets


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--out", type=Path, default=Path("data/subsets"))
    args = ap.parse_args(argv)
    write_subsets(load_params(), args.corpus, args.out)


if __name__ == "__main__":
    sys.exit(run_stage(main))
