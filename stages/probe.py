"""Stage `probe@<upstream>`: a linear phone probe per layer on one upstream's cached features (labelbudget.probe):
frame accuracy per test set and weighted, per layer, in <out>/metrics.json; skipped (said so in the file) when
the corpus has no phone alignments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelbudget.config import configure_threads, load_params
from labelbudget.errors import run_stage
from labelbudget.probe import probe_upstream


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("upstream", help="a name in params `upstreams`")
    ap.add_argument("--features", type=Path, help="its features (default: data/features/<upstream>)")
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (phone alignments)")
    ap.add_argument("--out", type=Path, help="default: results/probe/<upstream>")
    args = ap.parse_args(argv)
    configure_threads()
    r = probe_upstream(args.upstream, load_params(), args.features or Path("data/features") / args.upstream,
                       args.corpus, args.out or Path("results/probe") / args.upstream)
    if "skipped" in r:
        print(f"probe@{args.upstream} skipped: {r['skipped']}")
        return
    layers = ", ".join(f"{k} {v['weighted']:.3f}" for k, v in r["accuracy"].items())
    print(f"{args.upstream}: phone frame accuracy per layer {layers} (chance {r['chance']['weighted']:.3f}); "
          f"best layer {r['best_layer']}; {r['seconds']:.1f} s")


if __name__ == "__main__":
    sys.exit(run_stage(main, warm=True))
