"""Stage `evaluate@<upstream>-<budget>-<seed>`: decode every test set with one finetuned model and score it
(labelbudget.evaluation): hyps.jsonl per utterance, metrics.json with WER/CER, intervals and the run's identity."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelbudget.config import configure_threads, load_params
from labelbudget.errors import run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True, help="a finetune's folder (model.pt, train.json)")
    ap.add_argument("--features", type=Path, required=True, help="the upstream's features folder")
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--out", type=Path, required=True, help="where hyps.jsonl and metrics.json go")
    args = ap.parse_args(argv)
    configure_threads()
    from labelbudget.evaluation import evaluate

    evaluate(load_params(), args.model, args.features, args.corpus, args.out)


if __name__ == "__main__":
    sys.exit(run_stage(main, warm=True))
