"""The report's calibration: the share-of-gap scale and the per-budget verdicts, on hand-made numbers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from defaults import params

from labelbudget.report.aggregate import ReportConfig
from labelbudget.report.calibration import (
    comparisons,
    error_gap_shares,
    probe_gap_shares,
    sensitivity,
    share_of_gap,
)

CFG = replace(ReportConfig.from_params(params("default")), upstreams=["small", "large", "random", "topline"],
              seeds=[0], toplines=["topline"])
BUDGETS = ["2", "6", "20", "60"]


def test_share_of_gap_places_a_value_between_the_control_and_the_topline():
    assert share_of_gap(0.54, 0.54, 0.82) == 0.0
    assert share_of_gap(0.82, 0.54, 0.82) == 1.0
    assert share_of_gap(0.68, 0.54, 0.82) == pytest.approx(0.5)
    assert share_of_gap(0.50, 0.54, 0.82) == pytest.approx(-4 / 28)  # worse than never trained: below 0
    # errors: lower is better, the same formula
    assert share_of_gap(0.50, 0.58, 0.44) == pytest.approx(8 / 14)
    assert share_of_gap(0.5, 0.5, 0.5) is None and share_of_gap(float("nan"), 0.5, 0.4) is None


def replicates(centres: dict[str, list[float]], spread: float) -> dict:
    """(upstream, budget) -> {'cer': replicates}: one shared noise draw per replicate, so differences are exact."""
    noise = np.random.default_rng(0).normal(0, 1, 1000)
    return {(u, b): {"cer": c + spread * noise * (k + 1) / 4, "wer": c + 0 * noise}
            for u, cs in centres.items() for k, (b, c) in enumerate(zip(BUDGETS, cs, strict=True))}


def table_of(centres: dict[str, list[float]]) -> dict:
    return {u: {b: {"weighted": {"cer": c}} for b, c in zip(BUDGETS, cs, strict=True)} for u, cs in centres.items()}


CENTRES = {"topline": [0.44, 0.39, 0.34, 0.32], "random": [0.58, 0.52, 0.47, 0.45],
           "large": [0.60, 0.50, 0.47, 0.40], "small": [0.58, 0.53, 0.48, 0.46]}


def test_per_budget_verdicts_follow_each_paired_interval():
    # independent noise per upstream, so the verdict depends on each difference's interval
    rng = np.random.default_rng(1)
    reps = {(u, b): {"cer": c + rng.normal(0, 0.01, 2000)} for u, cs in CENTRES.items()
            for b, c in zip(BUDGETS, cs, strict=True)}
    comps = comparisons(reps, CFG, table_of(CENTRES), "cer")
    assert set(comps) == {"topline-vs-random", "small-vs-random", "large-vs-random", "large-vs-small"}
    assert comps["topline-vs-random"]["verdicts"] == dict.fromkeys(BUDGETS, "holds")
    lv = comps["large-vs-random"]["verdicts"]
    assert lv["2"] == "inconclusive"  # 0.60 vs 0.58 with sd 0.014 of the difference: straddles 0
    assert lv["6"] == "inconclusive" and lv["20"] == "inconclusive" and lv["60"] == "holds"
    lo, hi = comps["large-vs-random"]["intervals"]["60"]
    assert lo < -0.05 + 0.03 and hi < 0 and lo < hi
    sens = sensitivity(comps, CFG)
    assert sens["verdict"] == "holds" and sens["detail"] == "holds at 4/4 budgets"


def test_a_worse_candidate_does_not_hold_and_an_unsound_one_is_invalid():
    worse = {**CENTRES, "topline": [0.70, 0.39, 0.60, 0.60]}
    reps = replicates(worse, 0.001)
    comps = comparisons(reps, CFG, table_of(worse), "cer")
    assert comps["topline-vs-random"]["verdicts"] == {"2": "does not hold", "6": "holds", "20": "does not hold",
                                                      "60": "does not hold"}
    assert sensitivity(comps, CFG)["verdict"] == "does not hold"
    health = {"topline": {"problems": ["only 1/8 finetunes converged"]}}
    comps = comparisons(replicates(CENTRES, 0.001), CFG, table_of(CENTRES), "cer", health)
    assert set(comps["topline-vs-random"]["verdicts"].values()) == {"invalid"}
    assert comps["topline-vs-random"]["problems"] and set(comps["small-vs-random"]["verdicts"].values()) != {"invalid"}
    assert sensitivity(comps, CFG)["verdict"] == "invalid"


def test_sensitivity_needs_three_of_four_budgets():
    three = {**CENTRES, "topline": [0.58, 0.39, 0.34, 0.32]}  # equal to random at 2 min
    comps = comparisons(replicates(three, 0.01), CFG, table_of(three), "cer")
    assert list(comps["topline-vs-random"]["verdicts"].values()).count("holds") == 3
    assert sensitivity(comps, CFG)["verdict"] == "holds"
    two = {**CENTRES, "topline": [0.58, 0.52, 0.34, 0.32]}
    comps = comparisons(replicates(two, 0.01), CFG, table_of(two), "cer")
    assert sensitivity(comps, CFG)["verdict"] == "inconclusive"
    assert sensitivity(comps, replace(CFG, toplines=[])) is None


def test_error_and_probe_gap_shares_on_hand_made_numbers():
    reps = replicates(CENTRES, 0.0)
    shares = error_gap_shares(table_of(CENTRES), reps, CFG, "cer")
    assert shares["large"]["60"]["share"] == pytest.approx(0.05 / 0.13, abs=1e-4)
    assert shares["large"]["2"]["share"] == pytest.approx(-0.02 / 0.14, abs=1e-4)
    assert shares["large"]["60"]["interval"] == pytest.approx([0.3846, 0.3846], abs=1e-3)
    probe = {"random": {"best": 0.54, "accuracy": {}}, "topline": {"best": 0.82, "accuracy": {}},
             "small": {"best": 0.61, "accuracy": {"0": {"weighted": 0.54}, "1": {"weighted": 0.61}}}}
    p = probe_gap_shares(probe, CFG)
    assert p["small"]["best"] == pytest.approx(0.25) and p["small"]["layers"] == {"0": 0.0, "1": 0.25}
    assert "large" not in p  # no probe for it
    assert probe_gap_shares({"small": probe["small"]}, CFG) == {}
