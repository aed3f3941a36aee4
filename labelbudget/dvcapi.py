"""Every call into DVC's private API, in one place. DVC's public API has no DAG with change detection, no repo
lock, no lockfile schema and no Hydra composition, and the pipeline needs all four. These names moved between
DVC minor versions before, so pyproject.toml pins DVC to the minors tests/test_dvcapi.py has run against; a new
DVC is adopted by running that contract test and widening the pin.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import cache
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


def fast_lockfile_writes() -> None:
    """Make this process's DVC write dvc.lock through ruamel's C reader and writer (libyaml) instead of its
    pure-Python round trip.

    `dvc repro -s` re-parses and re-dumps the whole dvc.lock after every stage, holding the repo lock: with the
    default experiment's 80 stages that round trip reaches 1.5 s a stage (0.4 s in C: benchmarks/dvc_lock.py),
    and every stage queued behind the lock waits for it. dvc.lock holds no comments for the round trip to keep.
    The C reader types values as DVC's own reader does (YAML 1.2), so every entry keeps its values and key order;
    only quoting may differ, and the flow's `orchestrate.dag.sort_lock` writes the file back in DVC's style when
    the run ends. The file is also replaced atomically, where DVC writes in place. Every other file DVC modifies
    (dvc.yaml, .dvc files) keeps DVC's writer."""
    import dvc.dvcfile as dvcfile

    original = dvcfile.modify_yaml
    if getattr(original, "labelbudget_fast", False):
        return

    def modify(path: Any, fs: Any = None) -> AbstractContextManager:
        return _modify_lock(path) if Path(str(path)).name == "dvc.lock" else original(path, fs=fs)

    modify.labelbudget_fast = True  # type: ignore[attr-defined]
    dvcfile.modify_yaml = modify


@contextmanager
def _modify_lock(path: Any) -> Iterator[dict]:
    from ruamel.yaml import YAMLError

    from labelbudget.io import atomic_path

    path = Path(str(path))
    try:
        data = load_lock(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    except YAMLError as exc:
        from dvc.utils.serialize import YAMLFileCorruptedError

        raise YAMLFileCorruptedError(str(path)) from exc
    yield data
    with atomic_path(path) as tmp:
        tmp.write_text(dump_lock(data), encoding="utf-8")


def load_lock(text: str) -> dict:
    """dvc.lock's text through the C reader, typed as DVC's own reader types it (YAML 1.2)."""
    return _c_yaml().load(text) or {}


def dump_lock(data: dict) -> str:
    """dvc.lock's text through the C writer: DVC's values and key order, not necessarily its quoting."""
    import io

    out = io.StringIO()
    _c_yaml().dump(data, out)
    return out.getvalue()


@cache
def _c_yaml() -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import SafeRepresenter

    class LockRepresenter(SafeRepresenter):  # a subclass: ruamel's own SafeRepresenter stays as it is
        pass

    LockRepresenter.add_representer(OrderedDict, SafeRepresenter.represent_dict)  # DVC builds OrderedDicts
    yaml = YAML(typ="safe", pure=False)
    yaml.Representer = LockRepresenter
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    return yaml


def main(argv: list[str]) -> int:
    """DVC's own command line (`python -m labelbudget.dvcapi repro -s STAGE`), dvc.lock written in C."""
    from dvc.cli import main as dvc_main

    fast_lockfile_writes()
    return dvc_main(argv)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
