"""Nested random label budgets: for one seed, every smaller budget is a prefix of one random order."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labelbudget.errors import LabelbudgetError

if TYPE_CHECKING:
    from labelbudget.schema import Params


class BudgetError(LabelbudgetError, ValueError):
    pass


def split_dev(rows: list[dict], dev_minutes: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Carve a fixed dev set (for early stopping) off the labeled pool; returns (pool, dev)."""
    order = np.random.default_rng(seed).permutation(len(rows))
    dev, total = [], 0.0
    for i in order:
        if total >= dev_minutes * 60:
            break
        dev.append(int(i))
        total += rows[i]["duration"]
    dev_set = set(dev)
    return [r for i, r in enumerate(rows) if i not in dev_set], [rows[i] for i in sorted(dev_set)]


def draw_budgets(rows: list[dict], budgets_min: list[float], seed: int, tolerance: float = 0.02
                 ) -> dict[float, list[str]]:
    """Uniformly random subsets of `rows` with total duration within `tolerance` (or one utterance) of each
    budget. One random order per seed; each budget takes the shortest prefix reaching its duration, so the
    subsets are nested by construction."""
    pool_s = sum(r["duration"] for r in rows)
    for b in budgets_min:
        if b * 60 > pool_s * (1 + tolerance):
            raise BudgetError(
                f"budget {b} min exceeds the labeled pool ({pool_s / 60:.1f} min after the dev split); "
                "lower subsets.budgets_min or synthesize/ingest more labeled audio")
    order = np.random.default_rng(seed).permutation(len(rows))
    cum = np.cumsum([rows[i]["duration"] for i in order])
    out = {}
    for b in sorted(budgets_min):
        target = b * 60
        k = int(np.searchsorted(cum, target))  # first prefix reaching the target
        k = min(k, len(order) - 1)
        # Take whichever of the two neighbouring prefixes is closer to the budget.
        if k > 0 and abs(cum[k - 1] - target) < abs(cum[k] - target):
            k -= 1
        out[b] = [rows[i]["id"] for i in order[: k + 1]]
    return out


def write_subsets(params: Params, corpus_dir: Path, out: Path) -> dict:
    """`<out>/dev.txt`, `<out>/<budget>min-seed<seed>.txt` id lists and `<out>/summary.json`, atomically."""
    from labelbudget.io import atomic_dir, write_json
    from labelbudget.manifest import Corpus
    from labelbudget.runs import subset_file

    p = params.subsets
    corpus = Corpus.load(corpus_dir)
    rows = corpus.read(corpus.labeled)
    pool, dev = split_dev(rows, p.dev_minutes, params.seed)
    durations = {r["id"]: r["duration"] for r in rows}
    summary = {"dev": {"utterances": len(dev), "minutes": sum(r["duration"] for r in dev) / 60}}
    with atomic_dir(out) as tmp:
        (tmp / "dev.txt").write_text("".join(r["id"] + "\n" for r in dev))
        for seed in p.seeds:
            for minutes, ids in draw_budgets(pool, p.budgets_min, seed, p.tolerance).items():
                name = subset_file(minutes, seed).removesuffix(".txt")
                (tmp / f"{name}.txt").write_text("".join(i + "\n" for i in ids))
                got = sum(durations[i] for i in ids) / 60
                summary[name] = {"utterances": len(ids), "minutes": round(got, 3), "budget_minutes": minutes}
                print(f"{name:<22}{len(ids):>6} utts {got:8.2f} min")
        write_json(tmp / "summary.json", summary)
    return summary
