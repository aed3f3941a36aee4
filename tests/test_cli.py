"""The `labelbudget` command line and profiles: overlays composed into params.yaml as DVC's Hydra composition
does, user edits never discarded silently, and the model-size report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from labelbudget import profiles
from labelbudget.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


def test_shipped_params_are_the_default_composition():
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == profiles.compose(REPO, "default")


def test_profile_switch_composes_the_overlay_onto_the_base(project):
    assert main(["profile", "smoke"]) == 0
    p = params(project)
    assert p["profile"] == "smoke" and p["subsets"]["budgets_min"] == [1, 2]
    assert p["finetune"]["patience"] == 3  # not in the smoke overlay: the base's value
    assert main(["profile", "default"]) == 0
    assert params(project) == profiles.compose(REPO, "default")  # and back, nothing left of smoke


def test_overrides_compose_like_dvc_exp_run_set(project):
    assert main(["profile", "smoke", "--set", "subsets.seeds=[0, 1]", "--set", "ssl_sizes=[small]",
                 "--set", "~upstreams.large", "--set", "report.larger=null"]) == 0
    p = params(project)
    assert p["subsets"]["seeds"] == [0, 1] and p["ssl_sizes"] == ["small"] and "large" not in p["upstreams"]
    assert profiles.current(project) == ("smoke", ["subsets.seeds=[0, 1]", "ssl_sizes=[small]",
                                                   "~upstreams.large", "report.larger=null"])


def test_sizes_option_writes_the_overrides_one_ssl_size_needs(project):
    assert main(["profile", "smoke", "--sizes", "small"]) == 0
    p = params(project)
    assert p["ssl_sizes"] == ["small"] and "large" not in p["upstreams"] and p["report"]["larger"] is None
    assert p["report"]["smaller"] == "small"


def test_direct_edits_of_params_are_refused_not_discarded(project, capsys):
    text = (project / "params.yaml").read_text().replace("lr: 0.004", "lr: 0.01")
    (project / "params.yaml").write_text(text)
    assert main(["profile", "smoke"]) == 2
    assert "finetune.lr" in capsys.readouterr().err
    assert (project / "params.yaml").read_text() == text  # kept as the user left it
    assert main(["profile", "smoke", "--force"]) == 0
    assert params(project)["profile"] == "smoke"


@pytest.mark.parametrize("args,message", [
    (["profile", "huge"], "unknown profile 'huge'"),
    (["profile", "smoke", "--set", "finetune.lrr=1"], "Could not override 'finetune.lrr'"),
    (["profile", "smoke", "--set", "ssl_sizes=[small]"], "--set '~upstreams.large'"),
    (["sizes", "--profile", "nosuch"], "unknown profile 'nosuch'; available: calibration, default, gpu, paper, smoke"),
])
def test_bad_profiles_and_overrides_are_refused_and_params_left_alone(project, capsys, args, message):
    before = (project / "params.yaml").read_text()
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert (project / "params.yaml").read_text() == before


def test_the_plain_composition_for_hosts_without_dvc_equals_hydras():
    for name in profiles.available_profiles(REPO):
        assert profiles.compose_plain(REPO, name) == profiles.compose(REPO, name), name


def test_overlays_hold_only_keys_the_base_has():
    base = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())

    def unknown(overlay: dict, ref: dict, prefix: str = "") -> list[str]:
        return [f"{prefix}{k}" for k, v in overlay.items() if k not in ref] + [
            u for k, v in overlay.items() if isinstance(v, dict) and isinstance(ref.get(k), dict) and ref[k]
            and f"{prefix}{k}" != "upstreams"  # open mappings: an empty one in the base (ingest.tests), names
            for u in unknown(v, ref[k], f"{prefix}{k}.")]

    for path in (REPO / "conf" / "profile").glob("*.yaml"):
        assert unknown(yaml.safe_load(path.read_text()), base) == [], path.name


def test_paper_profile_instantiates_half_billion_and_two_billion_parameter_models(project, capsys):
    assert main(["sizes", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    counts = [int(line.split()[3].replace(",", "")) for line in out.splitlines() if line.startswith(("small", "large"))]
    assert 0.4e9 < counts[0] < 0.6e9 and 1.8e9 < counts[1] < 2.2e9


@pytest.mark.slow
def test_labelbudget_set_writes_what_dvc_exp_run_set_writes(tmp_path):
    import subprocess
    import sys

    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copytree(REPO / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "*.local"))
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages:\n  hi:\n    cmd: echo hi\n    params:\n      - finetune.lr\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    sets = ["profile=smoke", "finetune.lr=0.02", "~upstreams.random", "report.control=null"]
    subprocess.run([sys.executable, "-m", "dvc", "exp", "run", *(a for s in sets for a in ("-S", s))],
                   cwd=tmp_path, check=True, capture_output=True)
    by_dvc = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert by_dvc == profiles.compose(REPO, "smoke", sets[1:])
    assert by_dvc["finetune"]["lr"] == 0.02 and "random" not in by_dvc["upstreams"]
