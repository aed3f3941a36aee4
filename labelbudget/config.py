"""Reading `params.yaml` (composed from conf/ by labelbudget.profiles), finding the project, stage threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PARAMS = "params.yaml"


def load_params(path: str | Path = PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no params file; run `labelbudget profile default` to compose one from conf/")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def project_root(start: Path | None = None) -> Path:
    """The nearest directory holding dvc.yaml, from the working directory up (the project being run)."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "dvc.yaml").exists():
            return d
    raise FileNotFoundError(f"no dvc.yaml in {start} or above: run labelbudget inside the project")


def configure_threads() -> int:
    """Torch threads for this stage process: `LABELBUDGET_THREADS` when set (the flow sets cores / concurrency:
    on 2 cores two 2-thread jobs side by side spin-wait on each other and run ~10x slower), else torch's default."""
    import os

    import torch

    n = int(os.environ.get("LABELBUDGET_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()
