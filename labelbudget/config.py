"""Reading `params.yaml` (composed from conf/ by labelbudget.profiles), finding the project, stage threads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from labelbudget.errors import LabelbudgetError, ParamsError
from labelbudget.schema import check_params

PARAMS = "params.yaml"


PARAMS_LOG = "LABELBUDGET_PARAMS_LOG"  # set by a test: every stage appends the params keys it read


def load_params(path: str | Path = PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no params file; run `labelbudget profile default` to compose one from conf/")
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    check_params(params, where=str(path))  # before any stage work: one line naming the bad key
    log = os.environ.get(PARAMS_LOG)
    return _recorded(params, log) if log else params


class _Reads(dict):
    """A params mapping that records the dotted keys read from it (a whole sub-tree when it is iterated)."""

    def __init__(self, data: dict, prefix: str, seen: set[str]):
        super().__init__(data)
        self._prefix, self._seen = prefix, seen

    def _key(self, key: Any) -> str:
        return f"{self._prefix}{key}"

    def _wrap(self, key: Any, value: Any) -> Any:
        return _Reads(value, self._key(key) + ".", self._seen) if isinstance(value, dict) else value

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if not isinstance(value, dict):
            self._seen.add(self._key(key))
        return self._wrap(key, value)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def _whole(self) -> None:
        self._seen.add(self._prefix.rstrip(".") or "*")

    # iterating reads the whole sub-tree (copies, dumps, **unpacking all go through these)
    def __iter__(self):
        self._whole()
        return super().__iter__()

    def keys(self):
        self._whole()
        return super().keys()

    def items(self):
        self._whole()
        return super().items()

    def values(self):
        self._whole()
        return super().values()


def _recorded(params: dict, log: str) -> dict:
    import atexit
    import json
    import sys

    seen: set[str] = set()

    def write() -> None:
        stage = Path(sys.argv[0]).stem
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "argv": sys.argv[1:], "keys": sorted(seen)}) + "\n")

    atexit.register(write)
    return _Reads(params, "", seen)


def project_root(start: Path | None = None) -> Path:
    """The nearest directory holding dvc.yaml, from the working directory up (the project being run)."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "dvc.yaml").exists():
            return d
    raise LabelbudgetError(f"no dvc.yaml in {start} or above: run labelbudget inside the project")


def configure_threads(requested: int = 0) -> int:
    """Torch threads for this stage process: `requested` (a params `num_threads`) when > 0, else
    `LABELBUDGET_THREADS` when set (the flow sets cores / concurrency: on 2 cores two 2-thread jobs side by side
    spin-wait on each other and run ~10x slower), else torch's default."""
    import os

    import torch

    n = requested or int(os.environ.get("LABELBUDGET_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()
