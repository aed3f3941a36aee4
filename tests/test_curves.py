"""Fitted sample-efficiency curves (labelbudget.report.curves) on synthetic points with known parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labelbudget.report.curves import curves_markdown, curves_summary, fit, fit_curves, hours_at, power_law
from labelbudget.runs import budget_name

BUDGETS = [2, 6, 20, 60]
HOURS = np.array(BUDGETS) / 60
SMALL, LARGE = (0.06, 0.45, 0.30), (0.03, 0.45, 0.25)  # (a, b, c)


def synthetic(curves: dict[str, tuple], noise: float = 0.004, replicates: int = 500, seed: int = 0):
    """table, per-seed points and paired bootstrap replicates around known curves, as report.aggregate makes."""
    rng = np.random.default_rng(seed)
    table, per_run, reps = {}, {}, {}
    shared = rng.normal(0, noise, (replicates, len(BUDGETS)))  # one resample for every upstream: paired
    for u, p in curves.items():
        truth = power_law(HOURS, *p)
        table[u] = {budget_name(b): {"hours": h} for b, h in zip(BUDGETS, HOURS, strict=True)}
        per_run[u] = {budget_name(b): {str(s): {"weighted": {"cer": float(e + rng.normal(0, noise / 3))}}
                                       for s in (0, 1)} for b, e in zip(BUDGETS, truth, strict=True)}
        for k, b in enumerate(BUDGETS):
            reps[(u, budget_name(b))] = {"cer": truth[k] + shared[:, k] + rng.normal(0, noise / 2, replicates)}
    return table, per_run, reps


def test_the_fit_recovers_known_parameters_from_exact_points():
    a, b, c = fit(HOURS, power_law(HOURS, *SMALL))
    assert (a, b, c) == pytest.approx(SMALL, rel=1e-4)


def test_the_fit_of_repeated_seeds_recovers_parameters_under_noise():
    rng = np.random.default_rng(1)
    hours = np.repeat(HOURS, 2)
    a, b, c = fit(hours, power_law(hours, *SMALL) + rng.normal(0, 0.002, len(hours)))
    assert c == pytest.approx(SMALL[2], abs=0.02) and b == pytest.approx(SMALL[1], abs=0.15)


def test_bootstrap_intervals_cover_the_true_asymptote_and_saturation_hours():
    table, per_run, reps = synthetic({"small": SMALL, "large": LARGE})
    out = fit_curves(table, per_run, reps, BUDGETS, "cer", 0.95, "small", "large")
    for u, p in (("small", SMALL), ("large", LARGE)):
        f = out["upstreams"][u]
        lo, hi = f["c_interval"]
        assert f["converged"] and lo <= p[2] <= hi and hi - lo < 0.1
        true_10 = hours_at(p, p[2] * 1.1, cap=math.inf)
        lo, hi = f["within_10%"]["interval"]
        assert lo <= true_10 <= hi
    band = out["bands"]["small"]
    truth = power_law(np.array(band["hours"]), *SMALL)
    assert np.all(np.array(band["low"]) <= truth + 1e-3) and np.all(truth - 1e-3 <= np.array(band["high"]))


def test_the_hours_the_larger_model_needs_match_the_known_curves():
    table, per_run, reps = synthetic({"small": SMALL, "large": LARGE}, noise=0.0005)
    out = fit_curves(table, per_run, reps, BUDGETS, "cer", 0.95, "small", "large")
    for b, h in zip(BUDGETS, HOURS, strict=True):
        expected = hours_at(LARGE, float(power_law(np.array(h), *SMALL)), cap=math.inf)
        got = out["match"]["by_budget"][budget_name(b)]
        assert got["hours"] == pytest.approx(expected, rel=0.1)
        assert got["ratio"] > 1  # the larger model gets there with fewer labels
        assert got["kind"] == ("interpolated" if HOURS.min() <= got["hours"] <= HOURS.max() else "extrapolated")


def test_nothing_is_read_past_three_times_the_largest_budget():
    p = (0.05, 0.5, 0.3)
    assert math.isfinite(hours_at(p, float(power_law(np.array(2.9), *p)), cap=3.0))
    assert hours_at(p, float(power_law(np.array(3.1), *p)), cap=3.0) == math.inf
    assert hours_at(p, 0.29, cap=3.0) == math.inf  # below the asymptote: never


def test_a_curve_the_points_do_not_pin_down_is_said_not_to_converge_and_keeps_the_others():
    table, per_run, reps = synthetic({"small": SMALL, "flat": (0.0, 0.5, 0.4)}, noise=0.0)
    out = fit_curves(table, per_run, reps, BUDGETS, "cer", 0.95)
    assert out["upstreams"]["flat"] == {"converged": False, "why": "the least-squares fit did not converge"}
    assert out["upstreams"]["small"]["converged"]
    text = "\n".join(curves_markdown(out, 0.95))
    assert "| flat | the least-squares fit did not converge |" in text
    assert curves_summary(out)["upstreams"]["flat"]["converged"] is False


def test_fewer_than_three_budgets_give_one_line_and_no_fit():
    table, per_run, reps = synthetic({"small": SMALL})
    out = fit_curves(table, per_run, reps, BUDGETS[:2], "cer", 0.95)
    assert out["skipped"] == "2 budget(s): a 3-parameter curve needs at least 3"
    assert curves_markdown(out, 0.95)[-1].startswith("No fit: 2 budget(s)")
    assert "upstreams" not in curves_summary(out)
