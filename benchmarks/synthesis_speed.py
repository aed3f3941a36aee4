"""Wall seconds per synthesized audio hour of the embedded corpus (goal: under 30 s per hour on 2 cores).

    python benchmarks/synthesis_speed.py --hours 0.5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from labelbudget.corpus import plan, synthesize
from labelbudget.manifest import total_hours
from labelbudget.schema import Synth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=0.5, help="unlabeled audio to synthesize")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    cfg = Synth(unlabeled_hours=args.hours, labeled_hours=0.01, test_utterances=1, test_sets=["in_domain"],
                shard_size=32, workers=args.workers)
    t = time.perf_counter()
    plan(cfg, 0)
    t_text = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        corpus = synthesize(cfg, 0, Path(d))
        wall = time.perf_counter() - t
        hours = sum(total_hours(corpus.read(p)) for p in corpus.parts)
    print(f"{hours:.3f} h of audio in {wall:.1f} s on {cfg.workers or os.cpu_count()} processes "
          f"(includes text generation, {t_text:.1f} s when timed alone, mostly loading the Markov model): "
          f"{wall / hours:.1f} s per audio hour, "
          f"{hours * 3600 / wall:.0f}x real time")


if __name__ == "__main__":
    main()
