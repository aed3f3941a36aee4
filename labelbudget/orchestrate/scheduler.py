"""A DAG-wide scheduler: every stage is one Prefect task that runs `dvc repro -s <stage>`, submitted as soon as
all of its upstream stages have finished (at most `concurrency` at once), whatever stage group it belongs to.

DVC runs the stage, caches its outputs and writes dvc.lock exactly as `dvc repro` would. Only ready stages are
submitted: a task submitted early would hold a worker while it waits. `wait_for` still names the upstream
futures, which draws the dependencies in Prefect's UI. Deterministic failures (a failed data gate) are not
retried; others are, with exponential backoff.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.tasks import exponential_backoff

from labelbudget.orchestrate.dag import Dag

GATES = ("validate",)  # deterministic checks: never retried, and their failure is reported as such

# Stage outcomes, as reported in the flow's return value and artifact
RAN, CACHED, UNCHANGED, UP_TO_DATE = "ran", "restored from run-cache", "unchanged", "up to date"
FAILED, BLOCKED, INTERRUPTED = "failed", "not run (upstream failed)", "not run (interrupted)"

_stop = threading.Event()  # set by SIGINT/SIGTERM while a DAG runs: no stage is started after it


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the body runs, Ctrl-C or SIGTERM stops the scheduler from starting stages (the running ones end
    with their own signal, or finish); a second signal interrupts at once. Only the main thread can install
    handlers; elsewhere this does nothing."""
    _stop.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        if _stop.is_set():
            raise KeyboardInterrupt
        _stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _outcome(output: str) -> str:
    # DVC reports a run-cache hit only in its log; nothing in its API tells it apart from a run
    if "is cached - skipping run" in output:
        return CACHED
    if "didn't change, skipping" in output:
        return UNCHANGED
    return RAN


def stage_env(concurrency: int) -> dict[str, str]:
    env = dict(os.environ)
    # Stage commands say `python`: make it this interpreter, even for a worker started without its venv active
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    # Stages side by side share the cores: on 2 cores, two stages with 2 threads each spin-wait on each other
    # and run several times slower. LABELBUDGET_THREADS is read by the stages (labelbudget.config).
    threads = str(max(1, (os.cpu_count() or 1) // max(1, concurrency)))
    for var in ("LABELBUDGET_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


@task(name="dvc-repro", task_run_name="{stage}", cache_policy=NO_CACHE, retries=2)
def repro_stage(root: str, stage: str, concurrency: int = 1) -> dict[str, Any]:
    """Run one stage with DVC. `-s` reproduces this stage only (its upstream already ran); `--wait-for-lock`
    makes concurrent calls queue for the repo lock instead of failing after a few seconds."""
    logger = get_run_logger()
    start = time.time()
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "-s", stage]
    proc = subprocess.run(
        cmd, cwd=root, env=stage_env(concurrency), stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    output = proc.stdout + proc.stderr
    tail = "\n".join(output.strip().splitlines()[-40:])
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc repro -s {stage}` exited with {proc.returncode}:\n{tail}")
    logger.info("%s", tail)
    return {"outcome": _outcome(output), "start": start, "end": time.time()}


def verdict(changed: bool, upstream_outcomes: list[str]) -> str | None:
    """What to do with a stage whose upstream stages have all finished: BLOCKED, UP_TO_DATE, or None (run).

    A stage DVC did not report changed at the start is pulled in only because something upstream runs; if
    no upstream stage actually rewrote its outputs ("unchanged", "up to date"), its inputs are as they were
    and it is still up to date, exactly as `dvc repro` would find."""
    if any(o in (FAILED, BLOCKED) for o in upstream_outcomes):
        return BLOCKED
    if not changed and not any(o in (RAN, CACHED) for o in upstream_outcomes):
        return UP_TO_DATE
    return None


def run_dag(dag: Dag, concurrency: int = 2, retries: int = 2, retry_delay_s: float = 10.0) -> dict[str, Any]:
    """Run every stage of `dag` that needs running, each as soon as its upstream stages have finished.

    Returns {"status": {stage: outcome} for every stage, "timings": {stage: (start, end)} of those DVC ran,
    "errors": {stage: message} of those that failed}. A failure blocks only what depends on it."""
    logger = get_run_logger()
    root = str(dag.root)
    retrying = repro_stage.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_s), retry_jitter_factor=0.2
    )
    gate = repro_stage.with_options(retries=0)
    status: dict[str, str] = {name: UP_TO_DATE for name in dag.up_to_date()}
    timings: dict[str, tuple[float, float]] = {}
    errors: dict[str, str] = {}
    futures: dict[str, PrefectFuture] = {}
    running: dict[PrefectFuture, str] = {}
    pending = dag.to_run()  # topological order: among ready stages, the earliest in dvc.yaml goes first
    while pending or running:
        progressed = False
        for name in list(pending) if not _stop.is_set() else []:
            ups = dag.stages[name].upstream
            if not all(up in status for up in ups):
                continue
            decided = verdict(dag.stages[name].changed, [status[up] for up in ups])
            if decided:
                status[name] = decided
                pending.remove(name)
                progressed = True
            elif len(running) < concurrency:
                runner = gate if dag.stages[name].group in GATES else retrying
                future = runner.submit(
                    root=root,
                    stage=name,
                    concurrency=concurrency,
                    wait_for=[futures[up] for up in ups if up in futures],
                )
                futures[name] = future
                running[future] = name
                pending.remove(name)
        if not running:
            if pending and progressed:  # stages whose verdict came from stages decided in this very pass
                continue
            break
        done = next(as_completed(list(running)))
        done.wait()  # records the final state on the future (else `.state` asks the API)
        name = running.pop(done)
        if done.state.is_completed():
            result = done.result()
            status[name] = result["outcome"]
            timings[name] = (result["start"], result["end"])
        else:
            status[name] = FAILED
            errors[name] = str(done.state.message or done.state.name)
            logger.error("stage %s failed: %s", name, errors[name])
    for name in pending:  # interrupted (or, impossible in a DAG, a stage whose upstream never ended)
        status[name] = INTERRUPTED if _stop.is_set() else BLOCKED
    return {"status": status, "timings": timings, "errors": errors}
