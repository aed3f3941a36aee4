"""The benchmark protocol: interleaved rounds, results refused under load, the README table generated from the
result files; and the run timeline drawn from a flow's stage timings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402
import table  # noqa: E402

from labelbudget.orchestrate.timeline import lanes, write_timeline  # noqa: E402


def args(**kw) -> argparse.Namespace:
    return common.bench_args(argparse.ArgumentParser()).parse_args(
        ["--wait-idle", "0", *[x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]])


def test_baseline_and_candidate_run_interleaved(monkeypatch):
    monkeypatch.setattr(common, "load_per_core", lambda: 0.0)
    calls = []
    bench = common.Bench("t", args(pairs=5))
    out = bench.interleave({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0})
    assert calls == ["a", "b"] * 5
    assert out == {"a": [1.0] * 5, "b": [2.0] * 5}


def test_a_result_taken_on_a_busy_machine_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "load_per_core", lambda: 1.5)
    with pytest.raises(SystemExit, match="busy"):
        common.Bench("busy", args(pairs=5)).save({"x": 1}, "x: 1")
    assert not list(tmp_path.iterdir())


def test_a_busy_result_written_on_request_is_marked_and_shown_so(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "load_per_core", lambda: 1.5)
    busy = argparse.Namespace(**{**vars(args(pairs=5)), "allow_load": True})
    common.Bench("busy", busy).save({"x": 1}, "x: 1")
    result = json.loads((tmp_path / "busy.json").read_text())
    assert result["under_load"] is True and result["commit"] and result["pairs"] == 5
    assert "under load" in table.render(tmp_path)


def test_fewer_than_five_pairs_write_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "load_per_core", lambda: 0.0)
    with pytest.raises(SystemExit, match="pairs"):
        common.Bench("few", args(pairs=3)).save({"x": 1}, "x: 1")


def test_readme_benchmark_table_is_the_one_the_result_files_give():
    readme = (REPO / "README.md").read_text()
    assert table.replace_table(readme, table.render()) == readme, "run python benchmarks/table.py"


def test_stages_that_overlap_get_separate_lanes():
    rows = [{"start_s": 0.0, "seconds": 10.0}, {"start_s": 0.0, "seconds": 5.0}, {"start_s": 5.0, "seconds": 5.0},
            {"start_s": 10.0, "seconds": 1.0}]
    assert lanes(rows) == [0, 1, 1, 0]


def test_the_timeline_is_drawn_from_the_stage_timings(tmp_path):
    csv = tmp_path / "timings.csv"
    csv.write_text("stage,group,outcome,start_s,seconds,started_at\n"
                   "corpus,corpus,ran,0.0,40.0,2026-01-01T00:00:00\n"
                   "finetune@a-1,finetune,ran,40.0,120.0,2026-01-01T00:00:40\n"
                   "finetune@b-1,finetune,ran,41.0,100.0,2026-01-01T00:00:41\n")
    (tmp_path / "reports").mkdir()
    md = write_timeline(tmp_path, csv).read_text()
    assert "3 stages ran in 2.7 min" in md
    assert "| finetune | 2 | 3.7 |" in md
    assert (tmp_path / "reports" / "timeline.png").stat().st_size > 1000
