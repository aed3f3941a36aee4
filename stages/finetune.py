"""Stage `finetune@<upstream>-<budget>-<seed>`: the downstream CTC model on one label budget's cached features
(labelbudget.finetuning). Every input is checked before training; a missing one is named."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelbudget.config import configure_threads, load_params
from labelbudget.errors import run_stage
from labelbudget.runs import RunKey


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("upstream", help="a name in params `upstreams`")
    ap.add_argument("budget", help="label budget in minutes, as spelled in params subsets.budgets_min")
    ap.add_argument("seed", type=int, help="subset seed (an entry of params subsets.seeds)")
    ap.add_argument("--features", type=Path, help="default: data/features/<upstream>")
    ap.add_argument("--subsets", type=Path, default=Path("data/subsets"), help="id lists of the budgets")
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--out", type=Path, help="default: models/finetune/<upstream>-<budget>-<seed>")
    args = ap.parse_args(argv)
    configure_threads()
    from labelbudget.finetuning import finetune

    key = RunKey.of(args.upstream, args.budget, args.seed)
    finetune(key, load_params(), args.features or Path("data/features") / key.upstream, args.subsets,
             args.corpus, args.out or Path("models/finetune") / key.name)


if __name__ == "__main__":
    sys.exit(run_stage(main, warm=True))
