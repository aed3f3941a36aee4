"""The contract with DVC's private API (labelbudget.dvcapi): each call the pipeline makes still exists and still
behaves as the pipeline relies on. Run against a new DVC before widening its pin in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from labelbudget import dvcapi
from labelbudget.profiles import CONF_DIR, CONFIG_NAME, compose_plain

REPO = Path(__file__).resolve().parent.parent
DVC_YAML = """stages:
  a:
    cmd: echo a > a.txt
    params: [x]
    outs: [a.txt]
  b:
    cmd: cat a.txt > b.txt
    deps: [a.txt]
    outs: [b.txt]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text("x: 1\n")
    return tmp_path


def test_the_stage_graph_points_downstream_and_change_detection_runs_under_the_repo_lock(project):
    repo = dvcapi.open_repo(project)
    try:
        stages = {s.name: s for s in dvcapi.stages(repo)}
        assert set(stages) == {"a", "b"} and all(dvcapi.is_pipeline_stage(s) for s in stages.values())
        graph = dvcapi.active_graph(repo)
        assert list(graph.successors(stages["b"])) == [stages["a"]]  # b depends on a
        with dvcapi.repo_lock(repo):
            assert stages["a"].changed() is True  # never run
    finally:
        repo.close()


def test_yaml_round_trips_keep_dvc_formatting_and_the_lockfile_schema_judges(tmp_path):
    text = "schema: '2.0'\nstages:\n  a:\n    cmd: echo a > a.txt\n    outs:\n    - path: a.txt\n      md5: 1\n"
    assert dvcapi.parse_yaml(text, "dvc.lock")["stages"]["a"]["cmd"] == "echo a > a.txt"
    assert dvcapi.dumps_yaml(dvcapi.parse_yaml_for_update(text, "dvc.lock")) == text
    good = yaml.safe_load(text.replace("md5: 1", "md5: d41d8cd98f00b204e9800998ecf8427e\n      size: 0"))
    dvcapi.check_lockfile(good)
    with pytest.raises(Exception, match="stages"):
        dvcapi.check_lockfile({"schema": "2.0", "stages": {"a": {"cmd": 3, "outs": "no"}}})


def test_the_file_lock_is_taken_and_given_back(tmp_path):
    for _ in range(2):  # a lock not given back would make the second attempt wait forever
        with dvcapi.file_lock(tmp_path / "lock", tmp_path):
            pass


def test_hydra_composition_writes_what_the_plain_composition_gives(tmp_path):
    out = tmp_path / "params.yaml"
    dvcapi.compose_params(out, (REPO / CONF_DIR).resolve(), CONFIG_NAME, REPO, ["profile=smoke"])
    assert yaml.safe_load(out.read_text()) == compose_plain(REPO, "smoke")
