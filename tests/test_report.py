"""The report recomputes every number from per-utterance files; checked against hand calculations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from defaults import own_tests, raw

from labelbudget import report as R
from labelbudget.io import write_json, write_jsonl
from labelbudget.schema import parse_params

# Seed values of the weighted WER per (upstream, budget in minutes). Test set A: 2 utterances of 5 words,
# test set B: 1 utterance of 10 words, so word-count weights are 0.5 / 0.5 and weighted WER = errors / 20.
# Built so that every finding holds in every bootstrap replicate (a replicate may draw one seed twice: large's
# degradation lies in [0, 0.5], small's is 1.0).
WER = {
    ("large", 60): (0.20, 0.30), ("large", 6): (0.30, 0.30),
    ("small", 60): (0.40, 0.40), ("small", 6): (0.80, 0.80),
    ("fbank", 60): (0.35, 0.35), ("fbank", 6): (0.50, 0.50),
    ("random", 60): (0.45, 0.45), ("random", 6): (0.90, 0.90),
}
ALL_HOLD = {"F0": "holds", "F1": "holds", "F2": "holds", "F3": "holds"}
UPSTREAMS = ["small", "large", "fbank", "random"]
ROOT = Path(__file__).resolve().parent.parent


def utterance_rows(weighted_wer: float) -> list[dict]:
    """Three utterances whose word errors add up to weighted_wer * 20. Char errors are 2x the word errors over
    4x the length (A: 20 chars per utterance, B: 40), so the weighted CER is half the weighted WER."""
    e = round(weighted_wer * 20)
    a1 = a2 = e // 4
    b1 = e - a1 - a2
    return [
        {"test_set": t, "id": i, "ref": "r", "hyp": "h", "word_errors": e, "words": n, "char_errors": 2 * e,
         "chars": 4 * n}
        for t, i, e, n in (("A", "a1", a1, 5), ("A", "a2", a2, 5), ("B", "b1", b1, 10))
    ]


def write_fixture(root: Path) -> dict:
    for (u, b), per_seed in WER.items():
        for seed, wer in enumerate(per_seed):
            d = root / "results" / "eval" / f"{u}-{b}-{seed}"
            write_jsonl(d / "hyps.jsonl", utterance_rows(wer))
            # Deliberately wrong summary numbers: the report must recompute from the per-utterance rows.
            write_json(d / "metrics.json", {"upstream": u, "budget_minutes": float(b), "seed": seed,
                                            "weighted": {"wer": 0.999}, "steps": 100 + seed,
                                            "best_dev_cer": 0.5, "stopped_early": True,
                                            "layer_weights": [0.25, 0.75]})
    params = raw(corpus=own_tests("A", "B"), subsets={"budgets_min": [6, 60], "seeds": [0, 1]},
                 evaluate={"weights": "words", "bootstrap": 200, "ci": 0.95, "bootstrap_seed": 0},
                 report={"smaller": "small", "larger": "large", "baseline": "fbank", "control": "random",
                         "wer_threshold": 0.5, "f3_margin": 0.25, "min_converged": 0.9})
    assert list(params["upstreams"]) == UPSTREAMS
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return params


@pytest.fixture
def fixture_params(tmp_path: Path) -> dict:
    return write_fixture(tmp_path)


def test_weighted_wer_and_degradation_match_a_hand_calculation(tmp_path, fixture_params):
    cfg = R.ReportConfig.from_params(parse_params(fixture_params))
    result = R.build(tmp_path / "results" / "eval", cfg)
    large = result["table"]["large"]
    assert large["60"]["weighted"]["wer"] == pytest.approx(0.25)  # (0.20 + 0.30) / 2, not the stored 0.999
    assert large["60"]["weighted"]["wer_std"] == pytest.approx(0.0707107, rel=1e-5)  # sample std of 0.2, 0.3
    assert large["6"]["weighted"]["wer"] == pytest.approx(0.30)
    assert large["6"]["weighted"]["wer_rel_degradation"] == pytest.approx((0.30 - 0.25) / 0.25)
    assert large["60"]["weighted"]["wer_rel_degradation"] == 0.0
    assert result["table"]["small"]["6"]["weighted"]["wer_rel_degradation"] == pytest.approx(1.0)
    # per test set, seed 0 of large@60: 4 word errors -> A gets 1 + 1 of 10 words, B 2 of 10
    assert result["runs"]["large"]["60"]["0"]["tests"]["A"]["wer"] == pytest.approx(0.2)
    assert result["weights"] == pytest.approx({"A": 0.5, "B": 0.5})
    assert large["60"]["weighted"]["cer"] == pytest.approx(0.125)  # half the weighted WER
    lo, hi = large["60"]["weighted"]["wer_ci"]
    assert lo <= 0.25 <= hi


def test_explicit_weights_change_the_weighted_wer_as_by_hand(tmp_path, fixture_params):
    fixture_params["evaluate"]["weights"] = {"A": 3, "B": 1}
    cfg = R.ReportConfig.from_params(parse_params(fixture_params))
    result = R.build(tmp_path / "results" / "eval", cfg)
    # large@60 seed 0: 4 errors -> A 0.2, B 0.2; seed 1: 6 errors -> A (1+1)/10 = 0.2, B 4/10 = 0.4
    # weighted seed 1 = 0.75 * 0.2 + 0.25 * 0.4 = 0.25; mean over seeds (0.2 + 0.25) / 2
    assert result["table"]["large"]["60"]["weighted"]["wer"] == pytest.approx(0.225)


def test_findings_hold_on_a_fixture_built_to_satisfy_them(tmp_path, fixture_params):
    result = R.build(tmp_path / "results" / "eval", R.ReportConfig.from_params(parse_params(fixture_params)))
    assert result["judged_on"] == "wer"  # every upstream's WER at 60 min is below 0.5
    f = result["findings"]
    assert {k: v["verdict"] for k, v in f.items()} == ALL_HOLD
    assert f["F2"]["numbers"] == {"large": pytest.approx(0.2), "small": pytest.approx(1.0)}
    lo, hi = f["F2"]["intervals"]["degradation difference"]
    assert -1.0 <= lo <= hi <= -0.5  # large degrades by 0..0.5 in a replicate, small by 1.0
    assert f["F3"]["numbers"]["relative_gain"] == pytest.approx((0.5 - 0.3) / 0.5)
    # large already matches small@60 (0.40) at its smallest budget (0.1 h): at most 0.1 h, >= 10x less
    assert result["match"]["kind"] == "at_most" and result["match"]["ratio"] == pytest.approx(10)


def swap_upstreams(root: Path, a: str, b: str) -> None:
    """Swap the identities the runs of `a` and `b` state in their metrics.json (folders keep their names: the
    report trusts contents)."""
    for f in (root / "results" / "eval").glob("*/metrics.json"):
        m = json.loads(f.read_text())
        if m["upstream"] in (a, b):
            write_json(f, {**m, "upstream": b if m["upstream"] == a else a})


def test_two_evaluations_claiming_one_run_are_refused(tmp_path, fixture_params):
    m = json.loads((tmp_path / "results/eval/small-6-0/metrics.json").read_text())
    write_json(tmp_path / "results/eval/small-6-1/metrics.json", m)
    with pytest.raises(R.ReportError, match=r"both claim run \('small', 6.0, 0\)"):
        R.build(tmp_path / "results" / "eval", R.ReportConfig.from_params(parse_params(fixture_params)))


def test_findings_fail_when_the_larger_model_is_worse(tmp_path, fixture_params):
    swap_upstreams(tmp_path, "large", "small")
    result = R.build(tmp_path / "results" / "eval", R.ReportConfig.from_params(parse_params(fixture_params)))
    f = {k: v["verdict"] for k, v in result["findings"].items()}
    assert f == {"F0": "holds", "F1": "does not hold", "F2": "does not hold", "F3": "does not hold"}


def test_overlapping_intervals_make_a_finding_inconclusive_not_holding(tmp_path, fixture_params):
    """large beats small on the seed means at 60 min (0.25 vs 0.26), but one of its seeds is worse: the
    bootstrap over seeds straddles zero, so F1 cannot be called."""
    for seed, wer in enumerate((0.20, 0.30)):
        write_jsonl(tmp_path / "results" / "eval" / f"small-60-{seed}" / "hyps.jsonl", utterance_rows(0.25))
        write_jsonl(tmp_path / "results" / "eval" / f"large-60-{seed}" / "hyps.jsonl", utterance_rows(wer))
    result = R.build(tmp_path / "results" / "eval", R.ReportConfig.from_params(parse_params(fixture_params)))
    assert result["findings"]["F1"]["verdict"] == "inconclusive"
    lo, hi = result["findings"]["F1"]["intervals"]["60"]
    assert lo < 0 < hi


def mark_run(root: Path, name: str, **info) -> None:
    path = root / "results" / "eval" / name / "metrics.json"
    write_json(path, {**json.loads(path.read_text()), **info})


def test_a_degenerate_upstream_makes_its_findings_invalid(tmp_path, fixture_params):
    mark_run(tmp_path, "large-6-1", degenerate=True, stopped_early=False, stop_reason="max_steps")
    result = R.build(tmp_path / "results" / "eval", R.ReportConfig.from_params(parse_params(fixture_params)))
    f = result["findings"]
    assert {k: v["verdict"] for k, v in f.items()} == {"F0": "invalid", "F1": "invalid", "F2": "invalid",
                                                      "F3": "invalid"}
    assert "large-6-1" in f["F1"]["detail"] and "degenerate" in f["F1"]["detail"]
    assert result["health"]["small"]["problems"] == []


def test_findings_about_an_unconverged_upstream_are_invalid_and_others_are_not(tmp_path, fixture_params):
    mark_run(tmp_path, "fbank-60-0", stopped_early=False, stop_reason="max_steps")
    result = R.build(tmp_path / "results" / "eval", R.ReportConfig.from_params(parse_params(fixture_params)))
    f = result["findings"]
    assert f["F3"]["verdict"] == "invalid" and "only 3/4 finetunes converged" in f["F3"]["detail"]
    assert f["F1"]["verdict"] == "holds"
    assert result["converged"] == {"runs": 16, "converged": 15, "valid": True}


def test_a_non_finite_pretraining_makes_the_ssl_findings_invalid(tmp_path, fixture_params):
    pretraining = {"small": {"train/loss": 4.1, "train/masked_acc": 0.2},
                   "large": {"train/loss": float("nan"), "train/masked_acc": 0.0}}
    cfg = R.ReportConfig.from_params(parse_params(fixture_params))
    result = R.build(tmp_path / "results" / "eval", cfg, pretraining)
    f = result["findings"]
    assert f["F1"]["verdict"] == "invalid" and "pretraining ended non-finite" in f["F1"]["detail"]
    assert f["F0"]["verdict"] == "invalid"  # involves every SSL size


def test_findings_are_judged_on_cer_when_wer_saturates():
    table = {"a": {"60": {"weighted": {"wer": 0.3}}}, "b": {"60": {"weighted": {"wer": 0.93}}}}
    metric, why = R.judged_metric(table, "60", 0.5)
    assert metric == "cer" and "b" in why
    assert R.judged_metric({"a": {"60": {"weighted": {"wer": 0.3}}}}, "60", 0.5)[0] == "wer"


def test_hours_to_match_interpolates_in_log_hours():
    m = R.hours_to_match([0.1, 1.0], [0.5, 0.3], target=0.4)
    assert m["kind"] == "interpolated" and m["hours"] == pytest.approx(0.1**0.5)
    assert R.hours_to_match([0.1, 1.0], [0.5, 0.45], target=0.4)["kind"] == "not_reached"


def test_missing_evaluations_are_named(tmp_path, fixture_params):
    fixture_params["subsets"]["seeds"] = [0, 1, 2]
    with pytest.raises(R.ReportError, match="small-6-2"):
        R.build(tmp_path / "results" / "eval", R.ReportConfig.from_params(parse_params(fixture_params)))


def test_report_stage_writes_metrics_table_markdown_and_figures(tmp_path, fixture_params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    fixture_params["wandb"] = {"project": "labelbudget-test", "group": "test", "mode": "disabled"}
    for size in ("small", "large"):
        write_json(tmp_path / "models" / "pretrain" / size / "metrics.json",
                   {"train/loss": 4.0, "train/masked_acc": 0.2, "steps": 10})
    R.make_report(parse_params(fixture_params), Path("results/eval"), Path("models/pretrain"), Path("reports"))
    reports = tmp_path / "reports"
    for name in ("sample_efficiency_wer.png", "sample_efficiency_cer.png", "per_test_set_wer.png"):
        assert (reports / "figures" / name).stat().st_size > 10_000
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["findings"] == ALL_HOLD
    assert metrics["weighted"]["large"]["6"]["wer_rel_degradation"] == pytest.approx(0.2)
    csv = (reports / "sample_efficiency.csv").read_text().splitlines()
    assert csv[0].startswith("upstream,budget_minutes,hours,metric,weighted_error")
    assert len(csv) == 1 + len(UPSTREAMS) * 2
    md = (reports / "results.md").read_text()
    assert "judged on weighted WER" in md and "**F2**" in md and "holds" in md
    runs = json.loads((reports / "runs.json").read_text())
    assert runs["fbank"]["60"]["1"]["weighted"]["wer"] == pytest.approx(0.35)
    assert runs["fbank"]["60"]["1"]["steps"] == 101  # training facts per run beside its scores


@pytest.mark.parametrize("spelled,name", [(6000000, "6000000"), (2.0, "2.0"), (2, "2"), (0.5, "0.5")])
def test_budget_names_spell_the_params_value_as_dvc_does(spelled, name):
    from labelbudget.runs import RunKey, budget_name, subset_file

    assert budget_name(spelled) == name
    assert RunKey.of("small", spelled, 1).name == f"small-{name}-1"
    assert subset_file(spelled, 1) == f"{name}min-seed1.txt"


def probe_fixture(root: Path) -> None:
    """fbank: one layer; large: three, the middle one best; random: skipped (no alignments)."""
    def probe(accs: list[float]) -> dict:
        best = max(range(len(accs)), key=accs.__getitem__)
        return {"layers": list(range(len(accs))), "chance": {"weighted": 0.1, "tests": {"A": 0.1, "B": 0.1}},
                "accuracy": {str(k): {"weighted": a, "tests": {"A": a, "B": a}, "train": a}
                             for k, a in enumerate(accs)}, "best_layer": best, "best": accs[best]}

    write_json(root / "results/probe/fbank/metrics.json", {"upstream": "fbank", **probe([0.45])})
    write_json(root / "results/probe/large/metrics.json", {"upstream": "large", **probe([0.40, 0.55, 0.50])})
    write_json(root / "results/probe/random/metrics.json", {"upstream": "random", "skipped": "no alignments"})


def test_report_shows_phone_accuracy_per_layer_with_the_best_layer_marked(tmp_path, fixture_params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixture_params["wandb"] = {"project": "labelbudget-test", "group": "test", "mode": "disabled"}
    monkeypatch.setenv("WANDB_MODE", "disabled")
    probe_fixture(tmp_path)
    R.make_report(parse_params(fixture_params), Path("results/eval"), Path("models/pretrain"), Path("reports"),
                  Path("results/probe"))
    md = (tmp_path / "reports/results.md").read_text()
    assert "| upstream | chance | layer 0 | layer 1 | layer 2 | best layer |" in md
    assert "| large | 0.100 | 0.400 | **0.550** | 0.500 | 1 |" in md
    assert "| fbank | 0.100 | **0.450** |  |  | 0 |" in md
    assert "| random |" in md and "skipped: no alignments" in md
    assert (tmp_path / "reports/figures/phone_probe.png").stat().st_size > 10_000
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert metrics["phone_probe"]["large"] == {"best_layer": 1, "accuracy": 0.55, "chance": 0.1}
    csv = (tmp_path / "reports/phone_probe.csv").read_text().splitlines()
    assert csv[0].startswith("upstream,layer,accuracy,chance,best") and len(csv) == 1 + 1 + 3


def test_the_offline_report_run_holds_every_scored_row_and_wandb_line_charts(tmp_path, fixture_params, monkeypatch):
    from wandb_records import offline_runs

    from labelbudget.report.wandb_run import ROW_COLUMNS, X_NAME

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    fixture_params.update(profile="fixture", wandb={"project": "labelbudget-test", "group": "test",
                                                    "mode": "offline"})
    R.make_report(parse_params(fixture_params), Path("results/eval"), Path("models/pretrain"), Path("reports"))
    import wandb

    wandb.teardown()  # the W&B service writes the run file in the background
    (run_dir, run), = offline_runs(tmp_path)
    assert run["config"]["profile"] == "fixture" and "commit" in run["config"]
    logged = run["history"][0]
    table = json.loads((run_dir / "files" / logged["results/path"]).read_text())
    assert table["columns"] == ROW_COLUMNS
    # 4 upstreams x 2 budgets x 2 seeds x (2 test sets + weighted)
    assert len(table["data"]) == 4 * 2 * 2 * 3
    row = next(r for r in table["data"] if r[0] == "fbank" and r[4] == 60 and r[6] == 1 and r[7] == "weighted")
    assert row[5] == pytest.approx(1.0) and row[8] == pytest.approx(0.35) and row[9] == pytest.approx(0.175)
    for chart in ("charts/weighted_wer", "charts/weighted_cer", "charts/cer_A", "charts/cer_B"):
        panel = run["config"][f"_wandb/visualize/{chart}"]["panel_config"]
        assert panel["panelDefId"] == "wandb/lineseries/v0" and panel["stringSettings"]["xname"] == X_NAME
        points = json.loads((run_dir / "files" / logged[f"{chart}_table/path"]).read_text())
        assert {r[points["columns"].index("lineKey")] for r in points["data"]} == set(UPSTREAMS)
    points = json.loads((run_dir / "files" / logged["charts/weighted_wer_table/path"]).read_text())
    cols = points["columns"]
    large_60 = [r for r in points["data"] if r[cols.index("lineKey")] == "large"
                and r[cols.index("step")] == pytest.approx(0.0)]  # log10(1 h)
    assert [r[cols.index("lineVal")] for r in large_60] == [pytest.approx(0.25)]
