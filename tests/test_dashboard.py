"""`labelbudget dashboard`: offline it writes W&B's definition of the workspace it would save, with the panels the
comparison needs, for the experiment's project and group."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from labelbudget.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path


def panels(spec: dict) -> dict[str, list[dict]]:
    return {s["name"]: s["panels"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]}


def test_offline_the_dashboard_writes_its_workspace_definition_and_exits_0(project, capsys):
    assert main(["dashboard"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("W&B is offline: wrote the workspace definition to reports/wandb_workspace.json")
    spec = json.loads((project / "reports" / "wandb_workspace.json").read_text())
    assert spec["project"] == "labelbudget" and spec["displayName"] == "labelbudget: default"
    runset = spec["spec"]["section"]["runSets"][0]
    assert runset["filters"]["filters"][0] | {"disabled": False} == {
        "key": {"section": "run", "name": "group"}, "op": "=", "value": "default", "disabled": False}
    assert runset["grouping"] == [{"section": "config", "name": "upstream.value"}]
    by_section = panels(spec)
    tests = ["in_domain", "unseen_accents", "noisy", "reverb", "telephone", "rate_extremes"]
    scatter = [p["config"] for p in by_section["Finetunes by upstream"] if p["viewType"] == "Scatter Plot"]
    assert [(c["xAxis"], c["yAxis"], c["xAxisLogScale"]) for c in scatter] == [
        ("config:budget_hours.value", f"summary:test/{t}/cer", True) for t in tests]
    tables = [json.dumps(p["config"]) for p in by_section["Sample efficiency (report run)"]
              if p["viewType"] == "Vega2"]
    for key in ["charts/weighted_wer_table", "charts/weighted_cer_table", *(f"charts/cer_{t}_table" for t in tests)]:
        assert sum(f'"value": "{key}"' in t for t in tables) == 1, key
    lines = {m for p in by_section["Pretraining"] for m in p["config"]["metrics"]}
    assert {"train/loss", "probe/phone_acc", "probe/gain_over_random"} <= lines


def test_dashboard_help_explains_what_it_builds(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["dashboard", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "W&B workspace" in text and "offline" in text.lower() and "wandb-workspaces" in text
