"""A DVC remote shared between machines: pull what others computed before a run, push after it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


class RemoteError(RuntimeError):
    pass


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def remote_name(root: Path, remote: str) -> str:
    """`remote` is the name of a remote in .dvc/config, or a URL / directory that becomes remote `flow` in
    .dvc/config.local (untracked, so each machine can point at its own)."""
    if "://" not in remote and os.sep not in remote and not remote.startswith("."):
        return remote
    url = remote if "://" in remote else str(Path(remote).resolve())
    proc = dvc(root, "remote", "add", "--local", "--force", "flow", url)
    if proc.returncode != 0:
        raise RemoteError(f"cannot configure DVC remote {remote!r}: {proc.stderr.strip()}")
    return "flow"


def pull(root: Path, name: str) -> str:
    """Outputs another machine already produced are fetched, not recomputed; missing ones are fine."""
    proc = dvc(root, "pull", "--allow-missing", "-r", name)
    if proc.returncode != 0:
        raise RemoteError(f"dvc pull -r {name} failed: {(proc.stdout + proc.stderr).strip()[-2000:]}")
    return (proc.stdout + proc.stderr).strip()


def push(root: Path, name: str) -> None:
    proc = dvc(root, "push", "-r", name)
    if proc.returncode != 0:
        raise RemoteError(f"dvc push -r {name} failed: {proc.stderr.strip()[-2000:]}")
