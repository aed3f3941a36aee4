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


LOCK_PROJECT = """stages:
  gen:
    matrix:
      size: [small, large]
    cmd: >-
      python -c "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
      out-${item.size}.txt 'a long command line that DVC folds when it is wider than eighty characters: ${item.size}'
    params: [run, 'nested.deep', seeds]
    outs:
      - out-${item.size}.txt
  use:
    cmd: cat out-small.txt out-large.txt > both.txt
    deps: [out-small.txt, out-large.txt]
    outs: [both.txt]
"""
LOCK_PARAMS = """run: {lr: 0.001, decay: 1.0e-05, steps: 3000, name: 'x: y', empty: '', none: null, on: true,
  neg: -2.5, text: "caf\u00e9 \u2013 quoted 'and' \\"double\\""}
nested: {deep: {list: [1, 2.0, three], map: {a: 1}}}
seeds: [0, 1]
"""


def lock_after_repro(root: Path, dvc: list[str]) -> bytes:
    import subprocess
    import sys

    from dvc.repo import Repo

    Repo.init(str(root), no_scm=True).close()
    (root / "dvc.yaml").write_text(LOCK_PROJECT)
    (root / "params.yaml").write_text(LOCK_PARAMS)
    for stage in ("gen@small", "gen@large", "use"):  # one lock write per stage, as the flow makes them
        subprocess.run([sys.executable, "-m", *dvc, "repro", "-s", stage], cwd=root, check=True, capture_output=True)
    return (root / "dvc.lock").read_bytes()


def test_dvc_lock_written_in_c_holds_dvcs_values_and_its_rewrite_dvcs_bytes(tmp_path):
    ours = lock_after_repro(tmp_path / "ours", ["labelbudget.dvcapi"]).decode()
    theirs = lock_after_repro(tmp_path / "theirs", ["dvc"]).decode()
    values = dvcapi.parse_yaml(theirs, "dvc.lock")
    assert values["stages"]["gen@large"]["params"]["params.yaml"]["run"]["decay"] == 1e-05  # YAML 1.2 types
    assert dvcapi.parse_yaml(ours, "dvc.lock") == values
    assert list(dvcapi.parse_yaml(ours, "dvc.lock")["stages"]["use"]["outs"][0]) == ["path", "hash", "md5", "size"]
    # the flow's last step (dag.sort_lock) writes it back through DVC's round trip: then the bytes are DVC's
    assert dvcapi.dumps_yaml(dvcapi.parse_yaml_for_update(ours, "dvc.lock")) == theirs


def test_only_dvc_lock_takes_the_c_writer(tmp_path):
    import dvc.dvcfile

    dvcapi.fast_lockfile_writes()
    dvcapi.fast_lockfile_writes()  # idempotent: a second call must not wrap the wrapper
    with dvc.dvcfile.modify_yaml(tmp_path / "dvc.lock") as data:
        data["schema"] = "2.0"
    assert (tmp_path / "dvc.lock").read_text() == "schema: '2.0'\n"
    assert not list(tmp_path.glob(".dvc.lock.*"))  # replaced atomically, no temporary left behind
    with dvc.dvcfile.modify_yaml(tmp_path / "dvc.yaml") as data:  # any other file: DVC's own round trip
        data["stages"] = {}
    assert (tmp_path / "dvc.yaml").read_text() == "stages: {}\n"
