"""A DAG-wide scheduler: every stage is one Prefect task that runs `dvc repro -s <stage>`, submitted as soon as
all of its upstream stages have finished (at most `concurrency` at once), whatever stage group it belongs to.

DVC runs the stage, caches its outputs and writes dvc.lock exactly as `dvc repro` would. Only ready stages are
submitted: a task submitted early would hold a worker while it waits. `wait_for` still names the upstream
futures, which draws the dependencies in Prefect's UI. Deterministic failures (a failed data gate) are not
retried; others are, with exponential backoff.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.tasks import exponential_backoff

from labelbudget.errors import EXIT_KNOWN
from labelbudget.orchestrate import lockfile
from labelbudget.orchestrate.dag import Dag

GATES = ("validate",)  # deterministic checks: never retried, and their failure is reported as such

# Stage outcomes, as reported in the flow's return value and artifact
RAN, CACHED, UNCHANGED, UP_TO_DATE = "ran", "restored from run-cache", "unchanged", "up to date"
FAILED, BLOCKED, INTERRUPTED = "failed", "not run (upstream failed)", "not run (interrupted)"

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


class StageFailed(RuntimeError):
    """A stage's failure: `reason` in one line, and whether a retry can fix it (`retry`, `why`)."""

    def __init__(self, stage: str, code: int | None, reason: str, retry: bool, why: str, tail: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.code, self.reason, self.retry, self.why, self.tail = stage, code, reason, retry, why, tail

    def __reduce__(self):  # picklable for task runners that ship results between processes
        return StageFailed, (self.stage, self.code, self.reason, self.retry, self.why, self.tail)


_SHELL_REPORTED_KILLS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_RETRYABLE = re.compile(r"MemoryError|OutOfMemoryError|out of memory|Unable to acquire lock|Lock.*(timeout|busy)",
                        re.IGNORECASE)


def classify(stage: str, output: str) -> StageFailed:
    """Why `dvc repro -s stage` failed, from what it printed, and whether a retry can fix it."""
    lines = output.strip().splitlines()
    tail = "\n".join(lines[-40:])
    found = re.findall(r"exited with (-?\d+)", output)
    code = int(found[-1]) if found else None
    if code is not None and code - 128 in _SHELL_REPORTED_KILLS:
        code = 128 - code  # a shell that did not exec its command reports a kill as 128 + signal
    errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
    crash = next((ln for ln in reversed(lines) if re.match(r"^\w+(\.\w+)*(Error|Exception|Interrupt)\b", ln)), None)
    dvc_error = next((ln.removeprefix("ERROR: ") for ln in reversed(lines) if ln.startswith("ERROR: ")), None)
    reason = (errors[-1] if errors else crash or dvc_error or (lines[-1] if lines else "no output")).strip()
    if _stop.is_set():
        return StageFailed(stage, code, reason, False, "the run was interrupted", tail)
    if code == EXIT_KNOWN:
        return StageFailed(stage, code, reason, False, "a known error: the same inputs fail the same way", tail)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        return StageFailed(stage, code, f"killed by {name}" + (f" ({reason})" if errors else ""), True,
                           f"killed by {name} (out of memory, or stopped from outside): a retry can finish it", tail)
    if _RETRYABLE.search(output):
        return StageFailed(stage, code, reason, True, "out of memory or a busy lock: a retry can get through", tail)
    return StageFailed(stage, code, reason, False, "it crashed; a retry would crash the same way (traceback in "
                       "the stage's log)", tail)


def _should_retry(task, task_run, state) -> bool:
    """Prefect's retry condition: only a failure a retry can fix (see `classify`)."""
    exc = state.result(raise_on_failure=False)
    retry = isinstance(exc, StageFailed) and exc.retry
    get_run_logger().warning("%s failed: %s; %s: %s", task_run.name, getattr(exc, "reason", exc),
                             "retrying" if retry else "not retried", getattr(exc, "why", "an unexpected error"))
    return retry


def restore_outputs(root: str, stage: str) -> bool:
    """Put a failed stage's last good outputs back from the DVC cache (nothing to do if it never succeeded)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "checkout", "--quiet", stage], cwd=root,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return proc.returncode == 0


def corrupted_outputs(root: str, stage: str) -> list[str]:
    """Outputs of `stage` checked out from the DVC cache whose content no longer matches the recorded hash (DVC
    copies a cache file without re-hashing it; `dvc status` notices)."""
    import json

    proc = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "status", "--json", stage], cwd=root,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    try:
        entries = json.loads(proc.stdout or "{}").get(stage, [])
    except json.JSONDecodeError:
        return []
    return sorted(path for e in entries if isinstance(e, dict)
                  for path, why in e.get("changed outs", {}).items() if why in ("not in cache", "modified"))


def _corruption(stage: str, paths: list[str]) -> str:
    return (f"{stage}: {', '.join(paths)} came from the DVC cache but no longer match their recorded hashes: the "
            "cache copy is corrupted. Delete the output and its file under .dvc/cache, then run again")


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


@task(name="dvc-repro", task_run_name="{stage}", cache_policy=NO_CACHE, retries=2, retry_condition_fn=_should_retry)
def repro_stage(root: str, stage: str, concurrency: int = 1) -> dict[str, Any]:
    """Run one stage with DVC. `-s` reproduces this stage only (its upstream already ran); `--wait-for-lock`
    makes concurrent calls queue for the repo lock instead of failing after a few seconds."""
    logger = get_run_logger()
    if interrupted():
        raise StageFailed(stage, None, "not started: the run was interrupted", False, "the run was interrupted", "")
    start = time.time()
    code, output = run_tracked([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "-s", stage], root,
                               stage_env(concurrency))
    if code != 0:
        failure = classify(stage, output)
        if lockfile.DVC_REFUSED.search(output):  # a kill during DVC's dvc.lock write, here or beside this stage
            repaired = lockfile.repair(root) or "dvc.lock could not be read; the stage that broke it put it back"
            failure = StageFailed(stage, code, repaired, True, "dvc.lock was put back: a retry can finish it",
                                  failure.tail)
        logger.error("%s", failure.tail)
        raise failure
    logger.info("%s", "\n".join(output.strip().splitlines()[-40:]))
    outcome = _outcome(output)
    bad = corrupted_outputs(root, stage) if outcome == CACHED else []
    if bad:  # restored from the run-cache: trust, but verify before a later stage reads it
        raise StageFailed(stage, None, _corruption(stage, bad), False, "a corrupted cache fails the same way", "")
    return {"outcome": outcome, "start": start, "end": time.time()}


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


def _next_finished(finished: queue.Queue) -> PrefectFuture:
    """The next future to finish. Waits in short slices: a signal handler runs only when the main thread runs
    Python, and a signal delivered to a worker thread does not wake a blocked wait."""
    while True:
        with suppress(queue.Empty):
            return finished.get(timeout=0.2)


def run_dag(dag: Dag, concurrency: int = 2, retries: int = 2, retry_delay_s: float = 10.0) -> dict[str, Any]:
    """Run every stage of `dag` that needs running, each as soon as its upstream stages have finished.

    Returns {"status": {stage: outcome} for every stage, "timings": {stage: (start, end)} of those DVC ran,
    "errors": {stage: message} of those that failed}. A failure blocks only what depends on it."""
    with stop_on_signals(reset=False):  # over the (sub)flow engine's own SIGTERM handler
        return _run_dag(dag, concurrency, retries, retry_delay_s)


def _run_dag(dag: Dag, concurrency: int, retries: int, retry_delay_s: float) -> dict[str, Any]:
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
    finished: queue.Queue[PrefectFuture] = queue.Queue()
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
                future.add_done_callback(finished.put)
                futures[name] = future
                running[future] = name
                pending.remove(name)
        if not running:
            if pending and progressed:  # stages whose verdict came from stages decided in this very pass
                continue
            break
        done = _next_finished(finished)
        done.wait()  # records the final state on the future (else `.state` asks the API)
        name = running.pop(done)
        if done.state.is_completed():
            result = done.result()
            status[name] = result["outcome"]
            timings[name] = (result["start"], result["end"])
            if result["outcome"] in (RAN, CACHED):  # DVC rewrote dvc.lock: keep it while it is known good
                lockfile.snapshot(root)
        else:
            status[name] = INTERRUPTED if _stop.is_set() else FAILED
            exc = done.state.result(raise_on_failure=False)
            errors[name] = (f"{exc.reason} ({'retries used up' if exc.retry else 'not retried'}: {exc.why})"
                            if isinstance(exc, StageFailed) else str(done.state.message or done.state.name))
            # a failed gate keeps its report (the thing to read); any other stage gets its last good outputs back
            if dag.stages[name].group not in GATES and restore_outputs(root, name):
                bad = corrupted_outputs(root, name)
                if bad:
                    errors[name] += "; and " + _corruption(name, bad)
                else:
                    logger.warning("%s failed; its last good outputs are back from the DVC cache", name)
            logger.error("stage %s failed: %s", name, errors[name])
    for name in pending:  # interrupted (or, impossible in a DAG, a stage whose upstream never ended)
        status[name] = INTERRUPTED if _stop.is_set() else BLOCKED
    return {"status": status, "timings": timings, "errors": errors}
