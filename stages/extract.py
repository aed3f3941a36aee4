"""Stage `extract@<upstream>`: cached float16 features of the labeled pool and every test set from one entry of
params `upstreams` (a pre-trained SSL size, the `random` control, `fbank`, a transformers checkpoint...)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelbudget.config import configure_threads, load_params
from labelbudget.errors import run_stage
from labelbudget.extraction import extract_upstream


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("upstream", help="a name in params `upstreams`")
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (manifests)")
    ap.add_argument("--out", type=Path, help="features folder (default: data/features/<upstream>)")
    args = ap.parse_args(argv)
    configure_threads()
    out = args.out or Path("data/features") / args.upstream
    info = extract_upstream(args.upstream, load_params(), args.corpus, out)
    print(f"{args.upstream}: {info['audio_seconds']:.0f} s of audio in {info['wall_seconds']:.1f} s "
          f"({info['realtime_factor']:.0f}x real time)")


if __name__ == "__main__":
    sys.exit(run_stage(main, warm=True))
