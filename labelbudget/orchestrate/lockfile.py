"""dvc.lock kept recoverable. DVC rewrites dvc.lock in place, not atomically: a kill -9 during that write (the OOM
killer, a stop that reaches `dvc` itself) leaves it half-written, and every later `dvc repro` stops on it. The flow
keeps the last copy it saw valid under .dvc/tmp and puts it back when dvc.lock no longer loads.

A copy older than the workspace is safe: a stage whose entry is missing or stale is not up to date, so DVC runs it
again or restores it from the run-cache. Everything here holds DVC's repo lock, which `dvc repro` holds while it
writes dvc.lock, so a copy is never taken from, nor put over, a write in progress.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from labelbudget import dvcapi
from labelbudget.errors import LabelbudgetError
from labelbudget.io import atomic_path

LOCK = "dvc.lock"
GOOD = Path(".dvc") / "tmp" / "dvc.lock.good"  # the last dvc.lock seen valid
BROKEN = Path(".dvc") / "tmp" / "dvc.lock.broken"  # what the last repair replaced, kept to look at
# What `dvc` prints when it cannot load dvc.lock
DVC_REFUSED = re.compile(r"dvc\.lock' (is invalid|validation failed)|unable to read: '[^']*dvc\.lock'")

# fcntl locks belong to a process: threads of the flow also exclude each other with this
_threads = threading.Lock()
_repairs = [0]  # copies put back by this process (a run compares it before and after)


class LockfileError(LabelbudgetError):
    """dvc.lock does not load and cannot be put back by itself."""


@contextmanager
def dvc_repo_lock(root: str | Path) -> Iterator[None]:
    """DVC's repo lock (.dvc/tmp/lock), waited for as `dvc --wait-for-lock` does. Not re-entrant."""
    tmp = Path(root) / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with _threads, dvcapi.file_lock(tmp / "lock", tmp):
        yield


def problem(text: str) -> str | None:
    """Why DVC would refuse this dvc.lock text (its own YAML parser and lockfile schema), or None."""
    try:
        data = dvcapi.parse_yaml(text, LOCK)
    except Exception as e:  # noqa: BLE001 - any parse failure means DVC cannot read it either
        return f"is not valid YAML ({' '.join(str(e).split())[:120]})"
    try:
        dvcapi.check_lockfile(data or {})
    except Exception as e:  # noqa: BLE001 - voluptuous raises Invalid and its subclasses
        return f"fails DVC's lockfile schema ({' '.join(str(e).split())[:120]})"
    return None


def _read(path: Path) -> tuple[str, str | None]:
    """The file's text and why DVC would refuse it (None: it loads)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # a write cut inside a multi-byte character
        return raw.decode("utf-8", "replace"), "is not valid UTF-8"
    return text, problem(text)


def _snapshot(root: Path) -> bool:
    lock = root / LOCK
    if not lock.exists():
        return False
    text, why = _read(lock)
    if why is not None:
        return False
    with atomic_path(root / GOOD) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return True


def _repair(root: Path) -> str | None:
    lock, good = root / LOCK, root / GOOD
    if not lock.exists():
        return None
    text, why = _read(lock)
    if why is None:
        return None
    if re.search(r"^(<{7}|>{7}) ", text, flags=re.MULTILINE):
        raise LockfileError(f"{lock} holds git merge-conflict markers: resolve them (keep either side whole; "
                            "`dvc repro` then re-runs or restores from the run-cache what does not match)")
    saved, saved_why = _read(good) if good.exists() else (None, "missing")
    if saved is None or saved_why is not None:
        raise LockfileError(f"{lock} {why} (a run killed while DVC wrote it?), and no good copy at {good} to put "
                            "back: restore it from git (`git checkout dvc.lock`) or delete it (DVC then runs "
                            "every stage again or restores it from the run-cache)")
    with atomic_path(root / BROKEN) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_path(lock) as tmp:
        tmp.write_text(saved, encoding="utf-8")
    _repairs[0] += 1
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(good.stat().st_mtime))
    return (f"dvc.lock {why}: a run was killed while DVC wrote it; put back the copy of {taken} (the broken one "
            f"is {BROKEN}); stages finished after it run again or come from the run-cache")


def snapshot(root: str | Path) -> bool:
    """Keep dvc.lock as the good copy if it loads; returns whether it did."""
    with dvc_repo_lock(root):
        return _snapshot(Path(root))


def repair(root: str | Path) -> str | None:
    """Put the good copy back if dvc.lock does not load; returns what was done (None: nothing was wrong)."""
    with dvc_repo_lock(root):
        return _repair(Path(root))


def tidy(root: str | Path, order: Sequence[str], finished: Sequence[str] = (), repairs_before: int | None = None
         ) -> list[str]:
    """After a run, stopped or not: put back a dvc.lock a stopped `dvc` left broken; if a repair during the run
    rolled entries back (`repairs() > repairs_before`), record the `finished` stages again; write the stages in
    DAG order and keep the result as the good copy. Returns what the run's log should warn about."""
    from labelbudget.orchestrate.dag import sort_lock

    warnings: list[str] = []
    with dvc_repo_lock(root):
        try:
            repaired = _repair(Path(root))
        except LockfileError as e:  # left as it is: the next run stops on it with this line
            return [str(e)]
        warnings += [repaired] if repaired else []
    if repairs_before is not None and repairs() > repairs_before:
        try:  # `dvc` takes the repo lock itself
            rolled_back = recommit(root, finished)
        except subprocess.CalledProcessError as e:  # not lost: the next run re-runs them or uses the run-cache
            rolled_back = []
            warnings.append(f"dvc.lock: could not re-record the stages a repair rolled back: {e.stderr}")
        if rolled_back:
            warnings.append(f"dvc.lock: re-recorded {', '.join(rolled_back)} (they finished before a repair put "
                            "back an older copy)")
    with dvc_repo_lock(root):
        sort_lock(root, list(order))
        _snapshot(Path(root))
    return warnings


def repairs() -> int:
    """How many times this process has put a good copy back."""
    return _repairs[0]


def recommit(root: str | Path, stages: Sequence[str]) -> list[str]:
    """Record again in dvc.lock those of `stages` (finished in this run) whose entries a repair rolled back to
    the older copy: their outputs are in the workspace and the cache, so `dvc commit` writes the same entries
    their runs wrote. Returns the stages it re-recorded."""
    if not stages:
        return []
    dvc = [sys.executable, "-m", "dvc", "--wait-for-lock"]
    proc = subprocess.run([*dvc, "status", "--json", *stages], cwd=root, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=True)
    stale = [s for s in json.loads(proc.stdout or "{}") if s in stages]
    if stale:
        subprocess.run([*dvc, "commit", "--force", "--quiet", *stale], cwd=root, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, check=True)
    return stale
