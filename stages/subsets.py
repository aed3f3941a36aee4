"""Stage `subsets`: a dev split plus nested random label budgets (id lists) for every budget and seed."""

from __future__ import annotations

import argparse
from pathlib import Path

from labelbudget.config import load_params
from labelbudget.io import atomic_dir, write_json
from labelbudget.manifest import Corpus
from labelbudget.subsets import budget_name, draw_budgets, split_dev

OUT = Path("data/subsets")


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params()
    p = params["subsets"]
    corpus = Corpus.load("data/corpus")
    rows = corpus.read(corpus.labeled)
    pool, dev = split_dev(rows, p["dev_minutes"], params["seed"])
    durations = {r["id"]: r["duration"] for r in rows}
    summary = {"dev": {"utterances": len(dev), "minutes": sum(r["duration"] for r in dev) / 60}}
    with atomic_dir(OUT) as tmp:
        (tmp / "dev.txt").write_text("".join(r["id"] + "\n" for r in dev))
        for seed in p["seeds"]:
            for minutes, ids in draw_budgets(pool, p["budgets_min"], seed, p["tolerance"]).items():
                name = f"{budget_name(minutes)}min-seed{seed}"
                (tmp / f"{name}.txt").write_text("".join(i + "\n" for i in ids))
                got = sum(durations[i] for i in ids) / 60
                summary[name] = {"utterances": len(ids), "minutes": round(got, 3), "budget_minutes": minutes}
                print(f"{name:<22}{len(ids):>6} utts {got:8.2f} min")
        write_json(tmp / "summary.json", summary)


if __name__ == "__main__":
    main()
