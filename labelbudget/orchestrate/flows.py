"""The experiment as Prefect flows that drive the DVC pipeline of dvc.yaml.

`experiment` composes params.yaml when asked (a profile, overrides), reads the DAG from DVC and runs it with
the DAG-wide scheduler: every stage is one Prefect task running `dvc repro -s <stage>`, started as soon as its
inputs are ready, stages DVC reports up to date skipped without a task, failures retried with backoff, and a
failed stage stopping only what depends on it; a failed validation gate stops everything after it. Outputs,
dvc.lock and `dvc status` end up exactly as after `dvc repro`. `sweep` is the experiment over given SSL sizes,
budgets and seeds. Run them with `labelbudget run`, or deploy them with prefect.yaml (flows/pipeline.py).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from labelbudget.orchestrate import lockfile
from labelbudget.orchestrate import remote as dvc_remote
from labelbudget.orchestrate.dag import load_dag
from labelbudget.orchestrate.publish import REPORT, publish
from labelbudget.orchestrate.scheduler import BLOCKED, CACHED, FAILED, GATES, INTERRUPTED, RAN, run_dag
from labelbudget.orchestrate.stopping import stop_on_signals, stopped_by


class PipelineFailed(RuntimeError):
    pass


class PipelineInterrupted(PipelineFailed):
    """Ctrl-C or SIGTERM: stages stopped or not started; a rerun resumes. `signum` is the signal."""

    def __init__(self, message: str, signum: int | None):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):
        return PipelineInterrupted, (str(self), self.signum)


def _task_runner(kind: str, concurrency: int, dask_address: str | None = None):
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=concurrency)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        # by address: Prefect copies task runners, and DaskTaskRunner's copy forgets a `cluster` object
        return DaskTaskRunner(address=dask_address)
    raise ValueError(f"task_runner must be 'threads' or 'dask', not {kind!r}")


@contextmanager
def _local_dask_cluster(concurrency: int) -> Iterator[str]:
    """A Dask cluster for the run. Threads, not processes: each task only waits on a `dvc` subprocess."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=concurrency, processes=False, dashboard_address=None)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@contextmanager
def _workspace_lock(project: Path) -> Iterator[None]:
    """One flow run per workspace: another one (say the nightly run during a sweep) would rewrite params.yaml
    under this one. The lock is released when the process ends, however it ends."""
    path = project / ".dvc" / "tmp" / "labelbudget-flow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            get_run_logger().warning("another flow run is using %s; waiting for it to finish", project)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _project(root: str | None) -> Path:
    from labelbudget.config import project_root

    return Path(root).resolve() if root else project_root()


@flow(name="labelbudget-experiment", log_prints=True)
def experiment(
    profile: str | None = None,
    overrides: list[str] | None = None,
    concurrency: int = 2,
    task_runner: Literal["threads", "dask"] = "threads",
    targets: list[str] | None = None,
    retries: int = 2,
    retry_delay_s: float = 10.0,
    remote: str | None = None,
    dask_address: str | None = None,
    root: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run the experiment's DVC pipeline.

    Args:
        profile: compose conf/ with this profile into params.yaml first (None: params.yaml as it is).
        overrides: Hydra overrides composed with the profile, as `dvc exp run -S` takes them, e.g.
            ["ssl_sizes=[small]", "~upstreams.large", "subsets.seeds=[0]"].
        concurrency: stages running at once (independent stages only).
        task_runner: "threads" (default) or "dask" (a local Dask cluster, or the one at `dask_address`;
            its workers need this repository at the same path and a shared DVC remote).
        targets: run only these stages (or stage groups such as "subsets") and what they depend on.
        retries, retry_delay_s: retries of a failed stage, the first after retry_delay_s, then doubling.
        remote: DVC remote to pull from before and push to after the run: a remote's name in .dvc/config, a
            URL (s3://bucket/path) or a directory. A failed pull or push fails the run.
        root: the DVC project (default: the one the working directory is in).
        force: let the composition discard direct edits of params.yaml.

    Returns {"stages": {stage: outcome}, "timings": {stage: (start, end)} of the stages that ran,
    "report": path of reports/results.md or None}.
    """
    project = _project(root)
    with _workspace_lock(project), stop_on_signals():
        if profile or overrides:
            from labelbudget.profiles import write_params

            write_params(project, profile, overrides or [], force=force)
        return _experiment(project, max(1, concurrency), task_runner, targets, retries, retry_delay_s, remote,
                           dask_address)


def _experiment(project: Path, concurrency: int, task_runner: str, targets: list[str] | None, retries: int,
                retry_delay_s: float, remote: str | None, dask_address: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    repaired = lockfile.repair(project)  # before anything reads it: a kill during DVC's last write breaks it
    if repaired:
        logger.warning("%s", repaired)
    remote_name = dvc_remote.remote_name(project, remote) if remote else None
    if remote_name:
        logger.info("dvc pull -r %s: %s", remote_name, dvc_remote.pull(project, remote_name)[-500:])

    dag = load_dag(project)
    repairs = lockfile.repairs()
    lockfile.snapshot(project)  # a good copy from the start: a kill in the first minutes has one to go back to
    if targets:
        dag = dag.select(targets)
    logger.info("%d stages, %d to run: %s", len(dag.stages), len(dag.to_run()), ", ".join(dag.to_run()) or "none")

    if task_runner == "dask" and not dask_address:
        with _local_dask_cluster(concurrency) as address:
            result = _scheduled(dag, concurrency, retries, retry_delay_s, _task_runner("dask", concurrency, address))
    else:
        result = _scheduled(dag, concurrency, retries, retry_delay_s,
                            _task_runner(task_runner, concurrency, dask_address))
    status, timings, errors = result["status"], result["timings"], result["errors"]
    status = {name: status[name] for name in dag.order if name in status}

    # a stopped `dvc` may have been writing dvc.lock; a repair during the run may have rolled entries back
    finished = [n for n, s in status.items() if s in (RAN, CACHED)]
    for warning in lockfile.tidy(project, dag.order, finished, repairs_before=repairs):
        logger.warning("%s", warning)
    failed = [n for n, s in status.items() if s == FAILED]
    interrupted = [n for n, s in status.items() if s == INTERRUPTED]
    publish(project, status, timings, complete=not failed and not interrupted)
    _raise_if_not_complete(dag, status, errors)

    if remote_name:
        dvc_remote.push(project, remote_name)
        logger.info("pushed outputs to DVC remote %s", remote_name)

    report = project / REPORT
    return {"stages": status, "timings": timings, "report": str(report) if report.exists() else None}


def _raise_if_not_complete(dag, status: dict[str, str], errors: dict[str, str]) -> None:
    """One line for an interrupted run (how to resume) or a failed one (the first failure, or the gate)."""
    failed = [n for n, s in status.items() if s == FAILED]
    blocked = [n for n, s in status.items() if s == BLOCKED]
    interrupted = [n for n, s in status.items() if s == INTERRUPTED]
    if interrupted:
        import signal

        signum = stopped_by()
        by = f" by {signal.Signals(signum).name}" if signum else ""
        stopped = [n for n in interrupted if n in errors]
        raise PipelineInterrupted(
            f"interrupted{by}: {len(stopped)} running stage(s) stopped ({', '.join(stopped) or 'none'}), "
            f"{len(interrupted) - len(stopped)} not started{'; failed: ' + ', '.join(failed) if failed else ''}. "
            "Run again to resume: finished stages are kept", signum)
    if failed:
        gates = [n for n in failed if n.split("@")[0] in GATES]
        if gates:
            outs = ", ".join(o for g in gates for o in dag.stages[g].outs)
            msg = f"data validation failed ({', '.join(gates)}): see {outs}. Stopped before any training"
        else:
            first = failed[0]
            msg = f"{first} failed: {errors.get(first, '?')}"
            msg += f"; {len(failed) - 1} more stage(s) failed: {', '.join(failed[1:])}" if len(failed) > 1 else ""
        if blocked:
            msg += f"; {len(blocked)} downstream stage(s) not run"
        raise PipelineFailed(msg)


def _scheduled(dag, concurrency: int, retries: int, retry_delay_s: float, runner) -> dict[str, Any]:
    """The DAG-wide scheduler as a subflow: its task runner is the one asked for (threads or Dask)."""
    return dag_flow.with_options(task_runner=runner)(
        dag=dag, concurrency=concurrency, retries=retries, retry_delay_s=retry_delay_s)


# One subflow runs the whole DAG; parameters are not validated (a Dag is not a pydantic type)
dag_flow = flow(name="dvc-dag", flow_run_name="dvc-dag", log_prints=True, validate_parameters=False)(run_dag)


@flow(name="labelbudget-sweep", log_prints=True)
def sweep(
    sizes: list[str] | None = None,
    budgets_min: list[int | float] | None = None,  # int first: 2 must stay 2 (it names stages and files)
    seeds: list[int] | None = None,
    profile: str | None = "default",
    concurrency: int = 2,
    task_runner: Literal["threads", "dask"] = "threads",
    remote: str | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """The experiment over the given SSL sizes, label budgets (minutes) and seeds; None keeps the profile's.
    Stages already computed for a value are reused, so widening a sweep only runs the new values."""
    from labelbudget import profiles

    project = _project(root)
    current = profile or profiles.current(project)[0]
    overrides = profiles.size_overrides(profiles.compose(project, current), sizes) if sizes else []
    overrides += [f"subsets.budgets_min={profiles.value(budgets_min)}"] if budgets_min else []
    overrides += [f"subsets.seeds={profiles.value(seeds)}"] if seeds else []
    return experiment(profile=current, overrides=overrides, concurrency=concurrency, task_runner=task_runner,
                      remote=remote, root=str(project))
