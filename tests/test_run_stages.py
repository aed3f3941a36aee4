"""benchmarks/run_stages.py runs exactly the commands `dvc repro` would, in an order DVC accepts."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from run_stages import expand  # noqa: E402


def test_expanded_stages_and_commands_match_dvcs_own():
    from dvc.repo import Repo

    ours = expand(yaml.safe_load((REPO / "dvc.yaml").read_text()),
                  yaml.safe_load((REPO / "params.yaml").read_text()))
    with Repo(str(REPO)) as repo:
        theirs = {s.name: s.cmd for s in repo.index.stages}
        graph = repo.index.graph
        position = {name: k for k, (name, _) in enumerate(ours)}
        for stage in graph.nodes:  # edges point from a stage to what it depends on
            for dep in graph.successors(stage):
                assert position[dep.name] < position[stage.name], f"{dep.name} must run before {stage.name}"
    assert dict(ours) == theirs
