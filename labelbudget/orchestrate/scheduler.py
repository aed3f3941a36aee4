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
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.tasks import exponential_backoff

from labelbudget import forkserver
from labelbudget.orchestrate import lockfile
from labelbudget.orchestrate.dag import Dag
from labelbudget.orchestrate.failures import (
    StageFailed,
    classify,
    corrupted_outputs,
    corruption,
    restore_outputs,
    should_retry,
)
from labelbudget.orchestrate.stopping import interrupted, run_tracked, stop_on_signals

GATES = ("validate",)  # deterministic checks: never retried, and their failure is reported as such

# Stage outcomes, as reported in the flow's return value and artifact
RAN, CACHED, UNCHANGED, UP_TO_DATE = "ran", "restored from run-cache", "unchanged", "up to date"
FAILED, BLOCKED, INTERRUPTED = "failed", "not run (upstream failed)", "not run (interrupted)"

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


@task(name="dvc-repro", task_run_name="{stage}", cache_policy=NO_CACHE, retries=2, retry_condition_fn=should_retry)
def repro_stage(root: str, stage: str, concurrency: int = 1) -> dict[str, Any]:
    """Run one stage with DVC. `-s` reproduces this stage only (its upstream already ran); `--wait-for-lock`
    makes concurrent calls queue for the repo lock instead of failing after a few seconds."""
    logger = get_run_logger()
    if interrupted():
        raise StageFailed(stage, None, "not started: the run was interrupted", False, "the run was interrupted", "")
    start = time.time()
    # DVC's command line with dvc.lock written in C (dvcapi.fast_lockfile_writes). Not `-m`: a checkout whose
    # labelbudget predates `main` would run that module as a script, do nothing and exit 0; this fails instead.
    dvc = [sys.executable, "-c", "import sys; from labelbudget.dvcapi import main; sys.exit(main(sys.argv[1:]))"]
    code, output = run_tracked([*dvc, "--wait-for-lock", "repro", "-s", stage], root, stage_env(concurrency))
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
        raise StageFailed(stage, None, corruption(stage, bad), False, "a corrupted cache fails the same way", "")
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
    with stop_on_signals(reset=False), warm_stages(dag):  # over the (sub)flow engine's own SIGTERM handler
        return _run_dag(dag, concurrency, retries, retry_delay_s)


@contextmanager
def warm_stages(dag: Dag) -> Iterator[None]:
    """A fork server (labelbudget.forkserver) for the stages of this run, named in their environment: the
    finetune, evaluate, extract and probe scripts then start with torch and Lightning imported (a default run:
    64 finetunes and evaluations, ~7 s and ~1.5 s less each). `LABELBUDGET_FORKSERVER=off` runs every stage in
    its own fresh interpreter."""
    if os.environ.get(forkserver.ADDRESS_VAR) == "off" or not dag.to_run():
        yield
        return
    log = dag.root / ".dvc" / "tmp" / "forkserver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(forkserver.ADDRESS_VAR)
    with forkserver.serving(log) as address:
        os.environ[forkserver.ADDRESS_VAR] = address
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(forkserver.ADDRESS_VAR, None)
            else:
                os.environ[forkserver.ADDRESS_VAR] = previous


class _Run:
    """The state of one DAG run: what each stage came to, what runs now, what waits."""

    def __init__(self, dag: Dag, concurrency: int, retries: int, retry_delay_s: float):
        self.dag, self.root, self.concurrency = dag, str(dag.root), concurrency
        self.retrying = repro_stage.with_options(
            retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_s), retry_jitter_factor=0.2)
        self.gate = repro_stage.with_options(retries=0)
        self.status: dict[str, str] = {name: UP_TO_DATE for name in dag.up_to_date()}
        self.timings: dict[str, tuple[float, float]] = {}
        self.errors: dict[str, str] = {}
        self.futures: dict[str, PrefectFuture] = {}
        self.running: dict[PrefectFuture, str] = {}
        self.finished: queue.Queue[PrefectFuture] = queue.Queue()
        self.pending = dag.to_run()  # topological order: among ready stages, the earliest in dvc.yaml goes first

    def start_ready(self) -> bool:
        """Decide or submit every stage whose upstream has finished; True if a verdict was reached."""
        progressed = False
        for name in list(self.pending) if not interrupted() else []:
            ups = self.dag.stages[name].upstream
            if not all(up in self.status for up in ups):
                continue
            decided = verdict(self.dag.stages[name].changed, [self.status[up] for up in ups])
            if decided:
                self.status[name] = decided
                self.pending.remove(name)
                progressed = True
            elif len(self.running) < self.concurrency:
                runner = self.gate if self.dag.stages[name].group in GATES else self.retrying
                future = runner.submit(root=self.root, stage=name, concurrency=self.concurrency,
                                       wait_for=[self.futures[up] for up in ups if up in self.futures])
                future.add_done_callback(self.finished.put)
                self.futures[name] = future
                self.running[future] = name
                self.pending.remove(name)
        return progressed

    def record(self, done: PrefectFuture) -> None:
        """A finished stage's outcome; a failed one gets its last good outputs back (a failed gate keeps its
        report, the thing to read)."""
        done.wait()  # records the final state on the future (else `.state` asks the API)
        name = self.running.pop(done)
        if done.state.is_completed():
            result = done.result()
            self.status[name] = result["outcome"]
            self.timings[name] = (result["start"], result["end"])
            if result["outcome"] in (RAN, CACHED):  # DVC rewrote dvc.lock: keep it while it is known good
                lockfile.snapshot(self.root)
            return
        self.status[name] = INTERRUPTED if interrupted() else FAILED
        exc = done.state.result(raise_on_failure=False)
        self.errors[name] = (f"{exc.reason} ({'retries used up' if exc.retry else 'not retried'}: {exc.why})"
                             if isinstance(exc, StageFailed) else str(done.state.message or done.state.name))
        if self.dag.stages[name].group not in GATES and restore_outputs(self.root, name):
            bad = corrupted_outputs(self.root, name)
            if bad:
                self.errors[name] += "; and " + corruption(name, bad)
            else:
                get_run_logger().warning("%s failed; its last good outputs are back from the DVC cache", name)
        get_run_logger().error("stage %s failed: %s", name, self.errors[name])


def _run_dag(dag: Dag, concurrency: int, retries: int, retry_delay_s: float) -> dict[str, Any]:
    run = _Run(dag, concurrency, retries, retry_delay_s)
    while run.pending or run.running:
        progressed = run.start_ready()
        if not run.running:
            if run.pending and progressed:  # stages whose verdict came from stages decided in this very pass
                continue
            break
        run.record(_next_finished(run.finished))
    for name in run.pending:  # interrupted (or, impossible in a DAG, a stage whose upstream never ended)
        run.status[name] = INTERRUPTED if interrupted() else BLOCKED
    return {"status": run.status, "timings": run.timings, "errors": run.errors}
