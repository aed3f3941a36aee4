"""The `labelbudget` command line: profile switching and the model-size report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from labelbudget.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "profiles" / "default.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_profile_switch_copies_the_profile_onto_params(project):
    assert main(["profile", "smoke"]) == 0
    assert yaml.safe_load((project / "params.yaml").read_text())["profile"] == "smoke"


def test_unknown_profile_is_refused_and_params_left_alone(project, capsys):
    before = (project / "params.yaml").read_text()
    assert main(["profile", "huge"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert (project / "params.yaml").read_text() == before


def test_paper_profile_instantiates_half_billion_and_two_billion_parameter_models(project, capsys):
    assert main(["sizes", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    counts = [int(line.split()[3].replace(",", "")) for line in out.splitlines() if line.startswith(("small", "large"))]
    assert 0.4e9 < counts[0] < 0.6e9 and 1.8e9 < counts[1] < 2.2e9


def test_every_profile_has_the_same_sections_as_default():
    default = yaml.safe_load((REPO / "profiles" / "default.yaml").read_text())
    for path in (REPO / "profiles").glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())) == set(default), path.name
