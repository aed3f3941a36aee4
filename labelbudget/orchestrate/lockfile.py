"""dvc.lock kept recoverable. DVC rewrites dvc.lock in place, not atomically: a kill -9 (OOM killer, power loss)
during that write leaves it half-written, and every later `dvc repro` stops at "validation failed". The flow keeps
the last copy it saw valid under .dvc/tmp and puts it back when dvc.lock no longer loads.

A copy older than the workspace is safe: a stage whose entry is missing or stale is not up to date, so DVC runs it
again or restores it from the run-cache.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from labelbudget.errors import LabelbudgetError
from labelbudget.io import atomic_path

LOCK = "dvc.lock"
GOOD = Path(".dvc") / "tmp" / "dvc.lock.good"  # the last dvc.lock seen valid
BROKEN = Path(".dvc") / "tmp" / "dvc.lock.broken"  # what a repair replaced, kept to look at


class LockfileError(LabelbudgetError):
    """dvc.lock does not load and there is no good copy to put back."""


def problem(text: str) -> str | None:
    """Why DVC would refuse this dvc.lock text (YAML or its lockfile schema), or None."""
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from voluptuous import Invalid

    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        COMPILED_LOCKFILE_SCHEMA(data or {})
    except yaml.YAMLError as e:
        return f"not YAML ({' '.join(str(e).split())[:120]})"
    except Invalid as e:
        return f"fails DVC's lockfile schema ({e})"
    return None


def snapshot(root: str | Path) -> bool:
    """Keep dvc.lock as the good copy if it loads. Reads it once: a copy taken while DVC writes it is either
    rejected or a complete earlier prefix, which is safe (see the module's doc)."""
    root = Path(root)
    lock = root / LOCK
    if not lock.exists():
        return False
    text = lock.read_text()
    if problem(text) is not None:
        return False
    with atomic_path(root / GOOD) as tmp:
        tmp.write_text(text)
    return True


def repair(root: str | Path) -> str | None:
    """Put the good copy back if dvc.lock does not load; returns what was done (None: nothing was wrong)."""
    root = Path(root)
    lock, good = root / LOCK, root / GOOD
    if not lock.exists():
        return None
    text = lock.read_text()
    why = problem(text)
    if why is None:
        return None
    saved = good.read_text() if good.exists() else None
    if saved is None or problem(saved) is not None:
        raise LockfileError(f"{lock}: {why} (a run killed while DVC wrote it?), and no good copy at {good} to put "
                            "back: restore it from git (`git checkout dvc.lock`) or delete it (DVC then runs "
                            "every stage again or restores it from the run-cache)")
    with atomic_path(root / BROKEN) as tmp:
        tmp.write_text(text)
    with atomic_path(lock) as tmp:
        tmp.write_text(saved)
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(good.stat().st_mtime))
    return (f"dvc.lock {why}: a run was killed while DVC wrote it; put back the copy of {taken} (the broken one "
            f"is {BROKEN}); stages finished after it run again or come from the run-cache")
