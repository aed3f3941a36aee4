"""Small Weights & Biases helpers: one run per job, offline unless params or the environment say otherwise.

The mode goes into the environment (`WANDB_MODE`) as well as into `wandb.init`: W&B's service process and
Lightning's logger read the environment, so setting it only in `init` is not enough. An explicit `WANDB_MODE`
in the environment wins over params (CI and tests set `disabled` or `offline`). Sync offline runs later with
`wandb sync wandb/offline-run-*`.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labelbudget.schema import Params, Wandb


def init_run(wandb_params: Wandb, *, job_type: str, name: str, config: dict[str, Any],
             directory: str | Path = ".") -> Any:
    """Start a W&B run in the experiment's project and group; `finish` it before starting the next one."""
    os.environ.setdefault("WANDB_MODE", wandb_params.mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    Path(directory).mkdir(parents=True, exist_ok=True)
    return wandb.init(project=wandb_params.project, group=wandb_params.group,
                      job_type=job_type, name=name, config=config, dir=str(directory),
                      mode=os.environ["WANDB_MODE"], reinit="finish_previous")


@cache
def commit() -> str | None:
    """The git commit the code runs at (None outside a git checkout): a W&B workspace groups runs by it."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def group_keys(params: Params, upstream: str) -> dict[str, Any]:
    """The config keys every run of one upstream carries so a W&B workspace can group and filter by them:
    upstream, kind, size, objective (None for an upstream that was never pre-trained), profile, commit."""
    spec = params.upstreams.get(upstream)
    kind = spec.kind if spec is not None else "ssl"  # a pretraining run of a size no upstream names
    size = objective = None
    if kind == "ssl":
        top = params.toplines.get(upstream)
        size = top.size if top else (spec.size if spec is not None and spec.size else upstream)
        objective = top.objective if top else params.pretrain.objective
    elif kind == "random":
        size = spec.size
    return {"upstream": upstream, "kind": kind, "size": size, "objective": objective,
            "profile": params.profile, "commit": commit()}


def lightning_logger(run: Any) -> Any:
    """Lightning logger writing into an existing run (so the config and summary stay in that one run)."""
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(experiment=run)


def set_summary(run: Any, values: dict[str, Any]) -> None:
    for k, v in values.items():
        run.summary[k] = v


def finish(run: Any | None = None) -> None:
    """End the run: two runs in one process otherwise share one (Lightning's logger reuses the active run)."""
    import wandb

    (run or wandb).finish()
