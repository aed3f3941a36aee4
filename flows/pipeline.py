"""The experiment as Prefect flows that drive the DVC pipeline of `dvc.yaml`.

`experiment` writes the profile and overrides into params.yaml, reads the DAG from DVC, and runs it phase
by phase (data; pretrain + extract; finetune + evaluate; report), one subflow per phase. Inside a phase each
stage is one Prefect task that runs `dvc --wait-for-lock repro -s <stage>`: DVC runs the stage, caches its
outputs and writes dvc.lock exactly as `dvc repro` would, so `dvc status` is clean afterwards. Flows never
re-implement a stage. A task is submitted as soon as its upstream stages have finished (at most `concurrency`
at once), stages DVC reports up to date are skipped without a task, failures are retried with exponential
backoff, and a failed stage stops everything downstream of it; a failed validation gate stops the whole
pipeline before any training.

Run it with `labelbudget run` (see `labelbudget run --help`), or deploy it with prefect.yaml.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.dvc_dag import Dag, load_dag, sort_lock

ROOT = Path(__file__).resolve().parent.parent

# Phases in order, by stage group (the name in dvc.yaml). A stage of another group joins the latest phase of
# its upstream stages, so any DAG splits into phases that can run one after the other.
PHASES: dict[str, tuple[str, ...]] = {
    "data": ("corpus", "validate", "subsets"),
    "features": ("pretrain", "extract", "extract-baseline"),
    "downstream": ("finetune", "evaluate"),
    "report": ("report",),
}
GATES = ("validate",)  # deterministic checks: never retried, and their failure is reported as such
REPORT = "reports/results.md"
METRICS = "reports/metrics.json"
TIMINGS = "reports/timings.csv"  # written by the flow, not a DVC output: when each stage ran and for how long

# Stage outcomes, as reported in the flow's return value and artifact
RAN, CACHED, UNCHANGED, UP_TO_DATE = "ran", "restored from run-cache", "unchanged", "up to date"
FAILED, BLOCKED = "failed", "not run (upstream failed)"


class PipelineFailed(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------- params


def _same_style(old: Any, new: Any) -> Any:
    """A list replacing a `[a, b]` list is written `[a, b]` too (ruamel writes new lists as blocks)."""
    from ruamel.yaml.comments import CommentedSeq

    if isinstance(new, list) and isinstance(old, CommentedSeq) and old.fa.flow_style():
        seq = CommentedSeq(new)
        seq.fa.set_flow_style()
        return seq
    return new


def apply_params(root: Path, profile: str | None = None, overrides: dict[str, Any] | None = None) -> None:
    """Write the profile (copied from profiles/<name>.yaml) and then the overrides into params.yaml.

    Overrides are dotted keys that must already exist, e.g. {"subsets.budgets_min": [2, 6], "ssl_sizes":
    ["small"]}. The `ssl` entries of `upstreams` follow `ssl_sizes` unless `upstreams` is overridden too.
    Comments in params.yaml are kept."""
    from dvc.utils.serialize import modify_yaml

    if profile:
        from labelbudget.config import use_profile

        use_profile(profile, root)
    if not overrides:
        return
    overrides = dict(overrides)
    with modify_yaml(str(root / "params.yaml")) as params:
        if "upstreams" in params and "upstreams" not in overrides and "ssl_sizes" in overrides:
            overrides["upstreams"] = follow_sizes(dict(params["upstreams"]), overrides["ssl_sizes"])
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            node = params
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or leaf not in node:
                raise ValueError(f"unknown param {key!r} in {root / 'params.yaml'}")
            if node[leaf] != value:
                node[leaf] = _same_style(node[leaf], value)


def follow_sizes(upstreams: dict[str, Any], sizes: list[str]) -> dict[str, Any]:
    """`upstreams` with one `ssl` entry per size in `sizes`, in that order, then the other kinds."""
    from ruamel.yaml.comments import CommentedMap

    def entry(size: str) -> Any:
        if size in upstreams:
            return upstreams[size]
        new = CommentedMap(kind="ssl", source=f"models/pretrain/{size}/model.pt")
        new.fa.set_flow_style()
        return new

    others = {k: v for k, v in upstreams.items() if dict(v).get("kind") != "ssl"}
    return {**{s: entry(s) for s in sizes}, **others}


# ---------------------------------------------------------------------------------------------------- stages


def _outcome(output: str) -> str:
    if "is cached - skipping run" in output:
        return CACHED
    if "didn't change, skipping" in output:
        return UNCHANGED
    return RAN


def _stage_env(concurrency: int) -> dict[str, str]:
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
        cmd, cwd=root, env=_stage_env(concurrency), stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    output = proc.stdout + proc.stderr
    tail = "\n".join(output.strip().splitlines()[-40:])
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc repro -s {stage}` exited with {proc.returncode}:\n{tail}")
    logger.info("%s", tail)
    return {"outcome": _outcome(output), "start": start, "end": time.time()}


def _verdict(changed: bool, upstream_outcomes: list[str]) -> str | None:
    """What to do with a stage whose upstream stages have all finished: BLOCKED, UP_TO_DATE, or None (run).

    A stage DVC did not report changed at the start is pulled in only because something upstream runs; if
    no upstream stage actually rewrote its outputs ("unchanged", "up to date"), its inputs are as they were
    and it is still up to date, exactly as `dvc repro` would find."""
    if any(o in (FAILED, BLOCKED) for o in upstream_outcomes):
        return BLOCKED
    if not changed and not any(o in (RAN, CACHED) for o in upstream_outcomes):
        return UP_TO_DATE
    return None


def _run_phase(
    root: str,
    stages: list[str],
    upstream: dict[str, list[str]],
    changed: list[str],
    earlier: dict[str, str],
    concurrency: int = 2,
    retries: int = 2,
    retry_delay_s: float = 10.0,
) -> dict[str, Any] | Any:
    """Run `stages` (in topological order) as soon as their upstream stages have finished, at most
    `concurrency` at a time. `earlier` holds the outcomes of the stages of earlier phases. Submitting only
    ready stages keeps every worker busy: a task submitted early would hold a worker while it waits."""
    logger = get_run_logger()
    retrying = repro_stage.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_s), retry_jitter_factor=0.2
    )
    gate = repro_stage.with_options(retries=0)
    outcomes = dict(earlier)  # every finished stage, this phase's included
    status: dict[str, str] = {}
    timings: dict[str, tuple[float, float]] = {}
    errors: dict[str, str] = {}
    futures: dict[str, PrefectFuture] = {}
    running: dict[PrefectFuture, str] = {}
    pending = list(stages)
    while pending or running:
        for name in list(pending):
            if not all(up in outcomes for up in upstream[name] if up in stages):
                continue
            verdict = _verdict(name in changed, [outcomes.get(up, UP_TO_DATE) for up in upstream[name]])
            if verdict:
                status[name] = outcomes[name] = verdict
                pending.remove(name)
            elif len(running) < concurrency:
                runner = gate if name.split("@")[0] in GATES else retrying
                # wait_for on finished futures costs nothing and draws the dependency in Prefect's UI
                future = runner.submit(
                    root=root,
                    stage=name,
                    concurrency=concurrency,
                    wait_for=[futures[up] for up in upstream[name] if up in futures],
                )
                futures[name] = future
                running[future] = name
                pending.remove(name)
        if not running:
            if pending:  # stages whose verdict came from stages decided in this very pass
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
        outcomes[name] = status[name]
    summary = {"status": status, "timings": timings, "errors": errors}
    if errors:  # the phase shows as failed in the UI, and the caller still gets what every stage did
        return Failed(message=f"failed: {', '.join(errors)}", data=summary)
    return summary


# One flow object, renamed per phase by `experiment` (data, features, downstream, report)
phase_flow = flow(name="phase", log_prints=True)(_run_phase)


def assign_phases(dag: Dag) -> dict[str, list[str]]:
    """Split the DAG's stages into PHASES (topological order inside each), never placing a stage before
    one of its upstream stages."""
    names = list(PHASES)
    index_of = {group: i for i, groups in enumerate(PHASES.values()) for group in groups}
    phase_of: dict[str, int] = {}
    for name, stage in dag.stages.items():
        after = max((phase_of[up] for up in stage.upstream), default=0)
        phase_of[name] = max(index_of.get(stage.group, after), after)
    return {phase: [n for n in dag.stages if phase_of[n] == i] for i, phase in enumerate(names)}


# --------------------------------------------------------------------------------------------------- runners


def _task_runner(kind: str, concurrency: int, dask_address: str | None = None):
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=concurrency)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        # by address: Prefect copies task runners, and DaskTaskRunner's copy forgets a `cluster` object
        return DaskTaskRunner(address=dask_address)
    raise ValueError(f"task_runner must be 'threads' or 'dask', not {kind!r}")


def _local_dask_cluster(concurrency: int):
    """One in-process Dask cluster for the whole run (one per phase would start four). Threads, not processes:
    each task only waits on a `dvc` subprocess, which does the work."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=1, threads_per_worker=concurrency, processes=False, dashboard_address=None)


# ---------------------------------------------------------------------------------------------------- remote


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _remote_name(root: Path, remote: str) -> str:
    """`remote` is the name of a remote in .dvc/config, or a URL / directory that becomes remote `flow` in
    .dvc/config.local (untracked, so each machine can point at its own)."""
    if "://" not in remote and os.sep not in remote and not remote.startswith("."):
        return remote
    url = remote if "://" in remote else str(Path(remote).resolve())
    proc = _dvc(root, "remote", "add", "--local", "--force", "flow", url)
    if proc.returncode != 0:
        raise PipelineFailed(f"cannot configure DVC remote {remote!r}: {proc.stderr.strip()}")
    return "flow"


# --------------------------------------------------------------------------------------------------- results


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def metrics_markdown(metrics: Any) -> str:
    """A markdown table of a metrics JSON: a list of records (one row each), or nested dicts whose last key
    is the column (e.g. {"small": {"60": {"in_domain": 0.3, "weighted": 0.4}}} gives row small/60)."""
    if isinstance(metrics, list) and all(isinstance(r, dict) for r in metrics):
        rows = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in metrics]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
        return "\n".join(lines)

    leaves: list[tuple[tuple[str, ...], Any]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, str(key)))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, str(i)))
        else:
            leaves.append((path, node))

    walk(metrics, ())
    table: dict[str, dict[str, Any]] = {}
    for path, value in leaves:
        row, column = ("/".join(path[:-1]), path[-1]) if len(path) > 1 else ("/".join(path), "value")
        table.setdefault(row, {})[column] = value
    columns = list(dict.fromkeys(c for cells in table.values() for c in cells))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [
        f"| {row} | " + " | ".join(_cell(cells.get(c, "")) for c in columns) + " |"
        for row, cells in table.items()
    ]
    return "\n".join(lines)


def write_timings(root: Path, status: dict[str, str], timings: dict[str, tuple[float, float]],
                  phases: dict[str, list[str]]) -> Path:
    """One row per stage this run executed, in start order: phase, outcome, start (seconds after the first
    stage started, and local time) and duration."""
    import csv
    from datetime import datetime

    phase_of = {name: phase for phase, names in phases.items() for name in names}
    t0 = min((t[0] for t in timings.values()), default=0.0)
    path = root / TIMINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage", "phase", "outcome", "start_s", "seconds", "started_at"])
        for name, (start, end) in sorted(timings.items(), key=lambda kv: kv[1][0]):
            w.writerow([name, phase_of.get(name, ""), status.get(name, ""), round(start - t0, 1),
                        round(end - start, 1), datetime.fromtimestamp(start).isoformat(timespec="seconds")])
    return path


def _publish(
    root: Path,
    status: dict[str, str],
    timings: dict[str, tuple[float, float]],
    phases: dict[str, list[str]],
    complete: bool,
) -> None:
    rows = [
        f"| {phase} | `{name}` | {status[name]} | "
        + (f"{timings[name][1] - timings[name][0]:.1f}" if name in timings else "")
        + " |"
        for phase, names in phases.items()
        for name in names
    ]
    if timings:
        write_timings(root, status, timings, phases)
    create_markdown_artifact(
        "| phase | stage | outcome | seconds |\n|---|---|---|---|\n" + "\n".join(rows),
        key="labelbudget-stages",
        description="What each DVC stage did in this run",
    )
    metrics, report = root / METRICS, root / REPORT
    if complete and metrics.exists():  # after a failure it may be stale: publish only what this run stands by
        create_markdown_artifact(
            f"# Metrics ({METRICS})\n\n{metrics_markdown(json.loads(metrics.read_text()))}\n\n"
            f"Full report: `{report}`",
            key="labelbudget-metrics",
            description="Error rates per upstream, budget and seed",
        )
    if complete and report.exists():
        create_link_artifact(
            report.as_uri(), link_text=REPORT, key="labelbudget-report", description=str(report)
        )


# ----------------------------------------------------------------------------------------------------- flows


@flow(name="labelbudget-experiment", log_prints=True)
def experiment(
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    concurrency: int = 2,
    task_runner: Literal["threads", "dask"] = "threads",
    targets: list[str] | None = None,
    retries: int = 2,
    retry_delay_s: float = 10.0,
    remote: str | None = None,
    dask_address: str | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Run the experiment's DVC pipeline.

    Args:
        profile: copy profiles/<profile>.yaml onto params.yaml first (None: keep params.yaml as it is).
        overrides: dotted params written into params.yaml after the profile, e.g.
            {"ssl_sizes": ["small"], "subsets.budgets_min": [2, 6], "subsets.seeds": [0]}.
        concurrency: stages running at once (independent stages only).
        task_runner: "threads" (default) or "dask" (a local Dask cluster, or the one at `dask_address`;
            its workers need this repository at the same path and a shared DVC remote).
        targets: run only these stages (or stage groups such as "subsets") and what they depend on.
        retries, retry_delay_s: retries of a failed stage, the first after retry_delay_s, then doubling.
        remote: DVC remote to pull from before and push to after the run: a remote's name in .dvc/config, a
            URL (s3://bucket/path) or a directory.
        root: the DVC project (default: the repository this file lives in).

    Returns {"stages": {stage: outcome}, "timings": {stage: (start, end)} of the stages that ran,
    "report": path of reports/results.md or None}.
    """
    project = Path(root).resolve() if root else ROOT
    with _workspace_lock(project):
        return _experiment(
            project,
            profile=profile,
            overrides=overrides,
            concurrency=max(1, concurrency),
            task_runner=task_runner,
            targets=targets,
            retries=retries,
            retry_delay_s=retry_delay_s,
            remote=remote,
            dask_address=dask_address,
        )


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


def _experiment(
    project: Path,
    *,
    profile: str | None,
    overrides: dict[str, Any] | None,
    concurrency: int,
    task_runner: str,
    targets: list[str] | None,
    retries: int,
    retry_delay_s: float,
    remote: str | None,
    dask_address: str | None,
) -> dict[str, Any]:
    logger = get_run_logger()
    apply_params(project, profile, overrides)

    remote_name = _remote_name(project, remote) if remote else None
    if remote_name:  # outputs another machine already produced are fetched, not recomputed
        pulled = _dvc(project, "pull", "--allow-missing", "-r", remote_name)
        logger.info("dvc pull -r %s: %s", remote_name, (pulled.stdout + pulled.stderr).strip()[-500:])

    dag = load_dag(project)
    if targets:
        dag = dag.select(targets)
    phases = assign_phases(dag)
    status = {name: UP_TO_DATE for name in dag.up_to_date()}
    timings: dict[str, tuple[float, float]] = {}
    errors: dict[str, str] = {}
    logger.info(
        "%d stages, %d to run: %s", len(dag.stages), len(dag.to_run()), ", ".join(dag.to_run()) or "none"
    )

    cluster = _local_dask_cluster(concurrency) if task_runner == "dask" and not dask_address else None
    try:
        for phase, names in phases.items():
            to_run = []
            for name in names:
                if name not in dag.needs_run:
                    continue
                ups = dag.stages[name].upstream
                verdict = _verdict(dag.stages[name].changed, [status[u] for u in ups if u in status])
                # decided here only if every upstream stage is in an earlier phase; no subflow for nothing
                if verdict == BLOCKED or (verdict and all(u in status for u in ups)):
                    status[name] = verdict
                else:
                    to_run.append(name)
            if not to_run:
                continue
            runner = _task_runner(
                task_runner, concurrency, cluster.scheduler_address if cluster else dask_address
            )
            state = phase_flow.with_options(name=phase, flow_run_name=phase, task_runner=runner)(
                root=str(project),
                stages=to_run,
                upstream={n: list(dag.stages[n].upstream) for n in to_run},
                changed=[n for n in to_run if dag.stages[n].changed],
                earlier=dict(status),
                concurrency=concurrency,
                retries=retries,
                retry_delay_s=retry_delay_s,
                return_state=True,
            )
            result = state.result(raise_on_failure=False)
            if not isinstance(result, dict):  # the phase itself crashed, not one of its stages
                raise PipelineFailed(f"phase {phase} crashed: {state.message}") from (
                    result if isinstance(result, BaseException) else None
                )
            status.update(result["status"])
            timings.update(result["timings"])
            errors.update(result["errors"])
    finally:
        if cluster is not None:
            cluster.close()

    sort_lock(project, dag.order)
    failed = [n for n, s in status.items() if s == FAILED]
    blocked = [n for n, s in status.items() if s == BLOCKED]
    ordered = {phase: [n for n in names if n in status] for phase, names in phases.items()}
    _publish(project, status, timings, ordered, complete=not failed)

    if failed:
        gates = [n for n in failed if n.split("@")[0] in GATES]
        if gates:
            outs = ", ".join(o for g in gates for o in dag.stages[g].outs)
            msg = f"data validation failed ({', '.join(gates)}): see {outs}. Stopped before any training"
        else:
            msg = f"stage(s) failed after {retries} retries: {', '.join(failed)}"
        if blocked:
            msg += f"; {len(blocked)} downstream stage(s) not run: {', '.join(blocked)}"
        for name in failed:  # the end of what the stage printed usually says why
            msg += f"\n--- {name}:\n" + "\n".join(errors.get(name, "").strip().splitlines()[-6:])
        raise PipelineFailed(msg)

    if remote_name:
        pushed = _dvc(project, "push", "-r", remote_name)
        if pushed.returncode != 0:
            raise PipelineFailed(f"dvc push -r {remote_name} failed: {pushed.stderr.strip()[-2000:]}")
        logger.info("pushed outputs to DVC remote %s", remote_name)

    report = project / REPORT
    return {"stages": status, "timings": timings, "report": str(report) if report.exists() else None}


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
    overrides = {
        key: value
        for key, value in {
            "ssl_sizes": sizes,
            "subsets.budgets_min": budgets_min,
            "subsets.seeds": seeds,
        }.items()
        if value is not None
    }
    return experiment(
        profile=profile,
        overrides=overrides,
        concurrency=concurrency,
        task_runner=task_runner,
        remote=remote,
        root=root,
    )
