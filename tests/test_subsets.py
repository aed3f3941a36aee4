"""Label budgets: uniformly random, nested for one seed, within tolerance, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from labelbudget.subsets import BudgetError, draw_budgets, split_dev


def pool(n: int = 2000, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"u{i}", "duration": float(rng.uniform(1, 8))} for i in range(n)]


def minutes(rows, ids) -> float:
    d = {r["id"]: r["duration"] for r in rows}
    return sum(d[i] for i in ids) / 60


def test_smaller_budgets_are_subsets_of_larger_ones():
    rows = pool()
    b = draw_budgets(rows, [5, 20, 60, 120], seed=1)
    assert set(b[5]) < set(b[20]) < set(b[60]) < set(b[120])


def test_totals_within_two_percent_or_one_utterance():
    rows = pool()
    for budget, ids in draw_budgets(rows, [1, 5, 30, 150], seed=2).items():
        got = minutes(rows, ids)
        assert abs(got - budget) <= max(0.02 * budget, 8 / 60), (budget, got)


def test_same_seed_same_ids_and_other_seed_other_ids():
    rows = pool()
    assert draw_budgets(rows, [10], seed=3) == draw_budgets(rows, [10], seed=3)
    assert set(draw_budgets(rows, [10], seed=3)[10]) != set(draw_budgets(rows, [10], seed=4)[10])


def test_selection_is_uniform_not_by_length():
    rows = pool()
    ids = draw_budgets(rows, [100], seed=0)[100]
    d = {r["id"]: r["duration"] for r in rows}
    assert abs(np.mean([d[i] for i in ids]) - np.mean(list(d.values()))) < 0.3


def test_budget_larger_than_pool_is_a_clear_error():
    with pytest.raises(BudgetError, match=r"budget 9999 min exceeds the labeled pool"):
        draw_budgets(pool(100), [9999], seed=0)


def test_dev_split_is_disjoint_from_the_pool():
    rows = pool(500)
    rest, dev = split_dev(rows, 3, seed=0)
    assert 3 <= minutes(rows, [r["id"] for r in dev]) < 3.2
    assert not {r["id"] for r in rest} & {r["id"] for r in dev}
    assert len(rest) + len(dev) == len(rows)
