"""Stage `corpus`: synthesize the embedded corpus, or ingest a real one, into manifests (labelbudget.sources)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from labelbudget.config import load_params
from labelbudget.errors import run_stage
from labelbudget.manifest import total_hours
from labelbudget.sources import prepare


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/corpus"), help="corpus folder to write")
    args = ap.parse_args(argv)
    params = load_params()
    start = time.time()
    corpus = prepare(params, args.out)
    print(f"{'part':<24}{'utts':>7}{'hours':>9}")
    for part in corpus.parts:
        rows = corpus.read(part)
        print(f"{part:<24}{len(rows):>7}{total_hours(rows):>9.3f}")
    print(f"corpus ({params.corpus.source}) written to {args.out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(run_stage(main))
