"""Stopping a run: Ctrl-C or SIGTERM stops the DAG (no stage starts after it) and the running stages' process
groups (SIGTERM, then SIGKILL after GRACE_S). Each stage runs in a session of its own (`run_tracked`), so a signal
sent to the flow alone reaches them only through here."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

_stop = threading.Event()  # set by SIGINT/SIGTERM while a DAG runs: no stage is started after it
_stop_signal: list[int] = []  # the signal that stopped the run (the CLI exits with 128 + it)
_children: set[subprocess.Popen] = set()  # running `dvc repro` process groups
_children_lock = threading.Lock()
GRACE_S = 5.0  # seconds a stopped stage gets to exit on SIGTERM before SIGKILL


def stopped_by() -> int | None:
    return _stop_signal[-1] if _stop.is_set() and _stop_signal else None


def stop_children(grace_s: float = GRACE_S) -> None:
    """SIGTERM every running stage's process group (dvc and the stage script), SIGKILL what is left after
    `grace_s`. Each stage runs in its own session, so a signal sent to the flow alone (a scheduler, `timeout`,
    a Prefect cancellation) reaches them only through here."""
    with _children_lock:
        procs = list(_children)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        deadline = time.monotonic() + wait
        for p in procs:
            if p.poll() is None:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)
        while wait and time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)


def _on_signal(signum: int, frame) -> None:
    if _stop.is_set():
        raise KeyboardInterrupt
    _stop_signal.append(signum)
    _stop.set()
    threading.Thread(target=stop_children, name="stop-stages", daemon=True).start()


@contextmanager
def stop_on_signals(reset: bool = True) -> Iterator[None]:
    """While the body runs, Ctrl-C or SIGTERM stops the run: no stage is started after it and the running ones
    are stopped (SIGTERM, then SIGKILL after GRACE_S); a second signal interrupts at once. Finished stages are
    kept, so a rerun resumes. `reset=False` re-installs the handlers inside a Prefect (sub)flow, whose engine
    installs its own SIGTERM handler. Only the main thread can install handlers; elsewhere this does nothing."""
    if reset:
        _stop.clear()
        _stop_signal.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def interrupted() -> bool:
    return _stop.is_set()


def run_tracked(cmd: list[str], cwd: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `cmd` in its own session (a signal for the flow is not also delivered to it: stop_children forwards
    it), registered as a running stage; return its exit code and output."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    with _children_lock:
        _children.add(proc)
    try:
        stdout, stderr = proc.communicate()
    finally:
        with _children_lock:
            _children.discard(proc)
    return proc.returncode, stdout + stderr
