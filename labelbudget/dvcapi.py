"""Every call into DVC's private API, in one place. DVC's public API has no DAG with change detection, no repo
lock, no lockfile schema and no Hydra composition, and the pipeline needs all four. These names moved between
DVC minor versions before, so pyproject.toml pins DVC to the minors tests/test_dvcapi.py has run against; a new
DVC is adopted by running that contract test and widening the pin.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any


def open_repo(root: str | Path) -> Any:
    from dvc.repo import Repo

    return Repo(str(root))


def repo_lock(repo: Any) -> AbstractContextManager:
    """The lock `dvc repro` holds while it reads the state database (`Stage.changed` needs it)."""
    from dvc.repo import lock_repo

    return lock_repo(repo)


def active_graph(repo: Any) -> Any:
    """The stage graph `dvc repro` runs (frozen stages cut off from their upstream); edges point downstream."""
    from dvc.repo.reproduce import get_active_graph

    return get_active_graph(repo.index.graph)


def is_pipeline_stage(stage: Any) -> bool:
    """A dvc.yaml stage (not a .dvc file)."""
    from dvc.stage import PipelineStage

    return isinstance(stage, PipelineStage)


def file_lock(path: Path, tmp_dir: Path) -> AbstractContextManager:
    """DVC's repo lock file, waited for as `dvc --wait-for-lock` does."""
    from dvc.lock import make_lock

    return make_lock(str(path), tmp_dir=str(tmp_dir), wait=True)


def parse_yaml(text: str, path: str | Path) -> Any:
    from dvc.utils.serialize import parse_yaml as parse

    return parse(text, str(path))


def parse_yaml_for_update(text: str, path: str | Path) -> Any:
    """A round-trip YAML tree: written back with `dumps_yaml`, it keeps DVC's own formatting."""
    from dvc.utils.serialize import parse_yaml_for_update as parse

    return parse(text, str(path))


def dumps_yaml(data: Any) -> str:
    from dvc.utils.serialize import dumps_yaml as dumps

    return dumps(data)


def check_lockfile(data: dict) -> None:
    """Raise (voluptuous Invalid) if `data` fails DVC's dvc.lock schema."""
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA

    COMPILED_LOCKFILE_SCHEMA(data)


def compose_params(out: Path, conf_dir: Path, config_name: str, root: Path, overrides: list[str]) -> None:
    """params.yaml from a Hydra config, as `dvc exp run -S` composes it."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.core.global_hydra import GlobalHydra

    try:
        compose_and_dump(out, str(conf_dir), None, config_name, str(root), overrides)
    finally:
        GlobalHydra.instance().clear()  # Hydra's global state: the next composition in this process starts clean


def stages(repo: Any) -> Iterator[Any]:
    return iter(repo.index.stages)
