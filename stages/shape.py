"""Stage `shape@<size>`: the encoder shape of one params `models` size as a file (models/shape/<size>.json).
It is the source of the never-trained `random` control: the control's features then depend on that size's
shape alone, and a change to another size, or to pretraining, leaves them up to date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelbudget.config import load_params
from labelbudget.encoder import write_shape
from labelbudget.errors import run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("size", help="a key of params `models`")
    ap.add_argument("--out", type=Path, help="default: models/shape/<size>.json")
    args = ap.parse_args(argv)
    out = args.out or Path("models/shape") / f"{args.size}.json"
    print(f"shape@{args.size}: {write_shape(load_params(), args.size, out)}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
