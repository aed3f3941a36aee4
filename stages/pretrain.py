"""Stages `pretrain@<size>` and `topline@<name>`: self-supervised pretraining (BEST-RQ or HuBERT-style targets) of one
encoder size, or its calibration topline (the same recipe on true phone targets),
with a linear phone probe every `probe.pretrain.every` updates when the corpus has phone alignments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from labelbudget.config import configure_threads, load_params
from labelbudget.errors import run_stage
from labelbudget.pretraining import pretrain
from labelbudget.probe import PretrainingProbe


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("size", help="an SSL size (a key of params `models` listed in `ssl_sizes`, e.g. small or "
                                 "large) or a calibration topline (a key of params `toplines`)")
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (unlabeled part)")
    ap.add_argument("--out", type=Path, help="default: models/pretrain/<size or topline>")
    args = ap.parse_args(argv)
    params = load_params()
    configure_threads(params.pretrain.num_threads)
    summary = pretrain(args.size, params, args.out or Path("models/pretrain") / args.size, args.corpus,
                       monitor=PretrainingProbe.from_params(params, args.corpus))
    if summary:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(run_stage(main))
