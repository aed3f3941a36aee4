"""Reading `params.yaml` (composed from conf/ by labelbudget.profiles), finding the project, stage threads."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from labelbudget.errors import LabelbudgetError, ParamsError
from labelbudget.schema import Params, parse_params, record_reads

PARAMS = "params.yaml"


PARAMS_LOG = "LABELBUDGET_PARAMS_LOG"  # set by a test: every stage appends the params keys it read


def load_params(path: str | Path = PARAMS) -> Params:
    """The project's params, typed and checked before any stage work (one line naming a bad key)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no params file; run `labelbudget profile default` to compose one from conf/")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    params = parse_params(raw, where=str(path))
    log = os.environ.get(PARAMS_LOG)
    if log:
        _record_to(log)
    return params


def _record_to(log: str) -> None:
    """Append the dotted params keys this process reads (by attribute) to `log` when it exits."""
    import atexit
    import json
    import sys

    seen: set[str] = set()
    record_reads(seen)

    def write() -> None:
        stage = Path(sys.argv[0]).stem
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "argv": sys.argv[1:], "keys": sorted(seen)}) + "\n")

    atexit.register(write)


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
