"""Reading `params.yaml` and switching between the profiles kept in `profiles/`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

PARAMS = "params.yaml"
PROFILES_DIR = "profiles"


def load_params(path: str | Path = PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no params file; run `labelbudget profile default` to create one")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def project_root(start: Path | None = None) -> Path:
    """The nearest directory holding dvc.yaml, from the working directory up (the project being run)."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "dvc.yaml").exists():
            return d
    raise FileNotFoundError(f"no dvc.yaml in {start} or above: run labelbudget inside the project")


def available_profiles(root: Path | None = None) -> list[str]:
    root = root or project_root()
    return sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))


def use_profile(name: str, root: Path | None = None) -> Path:
    """Copy `profiles/<name>.yaml` onto `params.yaml`: DVC tracks only params.yaml, so this re-runs exactly the
    stages whose parameters differ."""
    root = root or project_root()
    src = root / PROFILES_DIR / f"{name}.yaml"
    if not src.exists():
        raise ValueError(f"unknown profile {name!r}; available: {', '.join(available_profiles(root))}")
    dst = root / PARAMS
    shutil.copyfile(src, dst)
    return dst


def configure_threads() -> int:
    """Torch threads for this stage process: `LABELBUDGET_THREADS` when set (the flow sets cores / concurrency:
    on 2 cores two 2-thread jobs side by side spin-wait on each other and run ~10x slower), else torch's default."""
    import os

    import torch

    n = int(os.environ.get("LABELBUDGET_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()
