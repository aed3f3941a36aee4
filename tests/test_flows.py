"""The Prefect flows drive the DVC DAG correctly: order, concurrency, skipping, retries, gates, resumption.

Every test works on a throwaway DVC project (tests/toy_project.py) with the experiment's DAG shape:
corpus -> validate -> subsets -> finetune@model-budget -> evaluate@model-budget -> report.
One full run is shared (module fixture); tests that change a project work on a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parents[1]

from toy_project import create_toy_project, write_params  # noqa: E402

from labelbudget.orchestrate.dag import load_dag  # noqa: E402
from labelbudget.orchestrate.failures import classify  # noqa: E402
from labelbudget.orchestrate.flows import experiment, sweep  # noqa: E402
from labelbudget.orchestrate.lockfile import DVC_REFUSED  # noqa: E402
from labelbudget.orchestrate.publish import metrics_markdown  # noqa: E402
from labelbudget.orchestrate.scheduler import UP_TO_DATE  # noqa: E402

DVC = [sys.executable, "-m", "dvc"]
# A Prefect server, DVC subprocesses and signals: the `slow` marker's definition (`make test-all` runs them).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API (SQLite) for the whole session: each start costs 10-20 s."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def timeline(root: Path) -> list[str]:
    """Stage labels in the order their commands finished (only commands that completed)."""
    path = root / "timeline.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["stage"] for line in path.read_text().splitlines()]


def intervals(root: Path) -> dict[str, tuple[float, float]]:
    lines = (root / "timeline.jsonl").read_text().splitlines()
    return {e["stage"]: (e["start"], e["end"]) for e in map(json.loads, lines)}


def label(stage: str) -> str:
    return stage.replace("@", "-")


def dvc_status(root: Path) -> dict:
    proc = subprocess.run([*DVC, "status", "--json"], cwd=root, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def run(root: Path, **kwargs):
    kwargs = {"concurrency": 4, "retry_delay_s": 0, **kwargs}
    return experiment(root=str(root), **kwargs)


def run_in_process_of_its_own(root: Path, env: dict[str, str]) -> dict:
    """The flow in a new process: after a killed run, DVC logs that it removed the dead process' lock entry, and
    its log handler in this process may hold a stream an earlier test's capture has closed (DVC then raises)."""
    code = (f"import json; from labelbudget.orchestrate.flows import experiment; "
            f"print('RESULT=' + json.dumps(experiment(root={str(root)!r}, concurrency=4, retry_delay_s=0)))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"the flow failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT="))[7:])


def copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def fresh_toy(tmp_path_factory) -> Path:
    """A toy project that never ran: copy it, do not change it."""
    return create_toy_project(tmp_path_factory.mktemp("fresh") / "toy", models=("a", "b"), budgets=(1,))


@pytest.fixture(scope="module")
def completed(prefect_api, fresh_toy, tmp_path_factory):
    """The toy DAG run once by the flow, with one stage failing once and a local DVC remote."""
    base = tmp_path_factory.mktemp("completed")
    root = copy_project(fresh_toy, base / "toy")
    (root / ".fail-once").mkdir()
    (root / ".fail-once" / "evaluate-a-1").touch()
    remote = base / "remote"
    result = run(root, remote=str(remote))
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    return SimpleNamespace(root=root, result=result, remote=remote, metrics=metrics, timeline=timeline(root))


# ------------------------------------------------------------------------------------------- one full run


def test_every_stage_runs_once_in_dependency_order(completed):
    dag = load_dag(completed.root)
    assert sorted(completed.timeline) == sorted(label(s) for s in dag.stages)
    spans = intervals(completed.root)
    for name, stage in dag.stages.items():
        for up in stage.upstream:
            assert spans[label(name)][0] >= spans[label(up)][1], f"{name} started before {up} ended"


def test_independent_stages_run_concurrently(completed):
    spans = sorted(v for k, v in completed.result["timings"].items() if k.startswith("finetune@"))
    assert len(spans) == 2
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans


def attempts(root: Path, stage_label: str) -> int:
    return (root / "attempts.log").read_text().split().count(stage_label)


def test_stage_killed_once_is_retried_and_the_run_completes(completed):
    assert not (completed.root / ".fail-once" / "evaluate-a-1").exists()  # it did fail once
    assert attempts(completed.root, "evaluate-a-1") == 2
    assert "evaluate-a-1" in completed.timeline
    assert set(completed.result["stages"].values()) == {"ran"}
    assert completed.metrics["a-1"] == {"wer": 0.3333}


def test_stage_timings_are_written_in_start_order(completed):
    import csv

    with open(completed.root / "reports" / "timings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["stage"] for r in rows} == set(completed.result["timings"])
    starts = [float(r["start_s"]) for r in rows]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert all(float(r["seconds"]) > 0 and r["group"] == r["stage"].split("@")[0] for r in rows)
    assert {r["outcome"] for r in rows} <= {"ran", "restored from run-cache"}


def test_the_flow_draws_the_run_timeline_beside_the_report(completed):
    timeline = (completed.root / "reports" / "timeline.md").read_text()
    assert f"{len(completed.result['timings'])} stages ran in" in timeline
    assert "| finetune | 2 |" in timeline and "![stage timeline](timeline.png)" in timeline
    assert (completed.root / "reports" / "timeline.png").stat().st_size > 1000


def test_dvc_status_is_clean_after_a_flow_run(completed):
    assert dvc_status(completed.root) == {}


def test_dvc_lock_is_what_plain_dvc_repro_writes(completed, fresh_toy, tmp_path):
    plain = copy_project(fresh_toy, tmp_path / "plain")
    subprocess.run([*DVC, "repro", "-q"], cwd=plain, check=True)
    assert (completed.root / "dvc.lock").read_text() == (plain / "dvc.lock").read_text()


def test_results_are_published_as_artifacts(completed):
    from prefect.artifacts import Artifact

    metrics = Artifact.get("labelbudget-metrics")
    assert metrics is not None and "| a-1 | 0.3333 |" in metrics.data
    report = Artifact.get("labelbudget-report")
    assert report is not None and "reports/results.md" in report.data
    stages = Artifact.get("labelbudget-stages")
    assert stages is not None and "`finetune@b-1`" in stages.data
    assert completed.result["report"] == str(completed.root / "reports" / "results.md")


# ------------------------------------------------------------------------------------- changes and faults


def test_up_to_date_stages_are_skipped_without_calling_dvc(completed, tmp_path):
    root = copy_project(completed.root, tmp_path / "toy")
    result = run(root)
    assert set(result["stages"].values()) == {UP_TO_DATE}  # decided from `dvc status`: no `dvc repro` at all
    assert timeline(root) == completed.timeline


def test_widening_a_sweep_by_one_budget_runs_only_that_budgets_stages(completed, tmp_path):
    root = copy_project(completed.root, tmp_path / "toy")
    result = sweep(sizes=["a", "b"], budgets_min=[1, 2], profile=None, concurrency=4, root=str(root))
    new = timeline(root)[len(completed.timeline) :]
    # subsets and report read the budget list; of the per-budget stages only budget 2's run
    assert sorted(new) == sorted(
        ["subsets", "finetune-a-2", "finetune-b-2", "evaluate-a-2", "evaluate-b-2", "report"]
    )
    assert result["stages"]["finetune@a-1"] == "unchanged"  # DVC was asked: its subset file is the same
    assert result["stages"]["evaluate@a-1"] == UP_TO_DATE  # not even asked
    assert dvc_status(root) == {}


def test_failed_validation_stops_every_stage_after_it(prefect_api, fresh_toy, tmp_path):
    root = copy_project(fresh_toy, tmp_path / "toy")
    write_params(root, models=("a", "b"), budgets=(1,), fail_validation=True)
    state = run(root, return_state=True)
    assert state.is_failed()
    assert "data validation failed (validate)" in state.message
    assert "data/validation/summary.md" in state.message
    assert "\n" not in state.message
    assert "6 downstream stage(s) not run" in state.message
    assert timeline(root) == ["corpus"]  # validate failed (not retried); nothing after it started
    assert not (root / "data" / "subsets").exists() and not (root / "models").exists()


def alive(pid: int) -> bool:
    """A process of that pid exists and is not a zombie (a stage the run killed is reaped by its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def locked_stages(root: Path) -> set[str]:
    """Stages DVC has recorded as done in dvc.lock."""
    try:
        return set((yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {}))
    except (FileNotFoundError, yaml.YAMLError):  # not written yet, or being written
        return set()


def test_interrupted_flow_resumes_where_it_stopped_with_the_same_metrics(
    prefect_api, completed, fresh_toy, tmp_path
):
    root = copy_project(fresh_toy, tmp_path / "toy")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "TOY_SLEEP": "2"}
    code = (f"from labelbudget.orchestrate.flows import experiment; "
            f"experiment(root={str(root)!r}, concurrency=1, retries=0)")
    with open(tmp_path / "interrupted-flow.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 150
            while "finetune@a-1" not in locked_stages(root):
                assert proc.poll() is None and time.monotonic() < deadline, (
                    "the flow ended before the interrupt"
                )
                time.sleep(0.1)
            started = len((root / "attempts.log").read_text().splitlines())
            while len((root / "attempts.log").read_text().splitlines()) == started:  # the next stage is running
                assert proc.poll() is None and time.monotonic() < deadline, "the flow ended before the interrupt"
                time.sleep(0.05)
        finally:
            # Ctrl-C reaches the flow and the `dvc repro` it is running, as in a terminal
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    done = locked_stages(root)  # what had completed when the flow died
    assert "report" not in done
    seen = len(timeline(root))

    result = run_in_process_of_its_own(root, env)
    rerun = set(timeline(root)[seen:])
    assert not rerun & {label(s) for s in done}, "a stage that had completed ran again"
    assert rerun | {label(s) for s in done} == set(completed.timeline)
    assert result["stages"]["corpus"] == UP_TO_DATE
    assert json.loads((root / "reports" / "metrics.json").read_text()) == completed.metrics
    assert dvc_status(root) == {}


def test_sigterm_to_the_cli_alone_stops_the_run_and_kills_its_running_stages(prefect_api, completed, fresh_toy,
                                                                             tmp_path):
    root = copy_project(fresh_toy, tmp_path / "toy")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "TOY_SLEEP": "60"}
    with open(tmp_path / "cli.log", "w") as log:
        proc = subprocess.Popen(["labelbudget", "run", "--concurrency", "2"], cwd=root, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 150
            while not (root / "attempts.log").exists() or "finetune" not in (root / "attempts.log").read_text():
                assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)  # as `timeout`, a scheduler or a Prefect cancellation do
            code = proc.wait(timeout=45)  # a stage takes 60 s: a run that waited for it would not be back yet
        finally:
            if proc.poll() is None:
                proc.kill()
    output = (tmp_path / "cli.log").read_text()
    assert code == 128 + signal.SIGTERM, output[-2000:]
    assert "interrupted by SIGTERM" in output
    stage_pids = [int(line.split()[1]) for line in (root / "attempts.log").read_text().splitlines()]
    assert stage_pids and not [pid for pid in stage_pids if alive(pid)], "a stage process outlived the run"
    assert "finetune@a-1" not in locked_stages(root)
    # resumes
    run_in_process_of_its_own(root, {**env, "TOY_SLEEP": "0.3"})
    assert json.loads((root / "reports" / "metrics.json").read_text()) == completed.metrics
    assert dvc_status(root) == {}


def test_a_second_run_at_once_waits_for_the_first_then_finds_everything_done(prefect_api, fresh_toy, tmp_path):
    root = copy_project(fresh_toy, tmp_path / "toy")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "TOY_SLEEP": "1"}
    first = subprocess.Popen([sys.executable, "-c", f"from labelbudget.orchestrate.flows import experiment; "
                              f"experiment(root={str(root)!r}, concurrency=2)"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (root / "attempts.log").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended before it started"
            time.sleep(0.1)
        second = run(root)
        assert first.poll() == 0  # the second returned only once the first had finished
    finally:
        first.wait(timeout=120)
    assert set(second["stages"].values()) == {UP_TO_DATE}
    assert sorted(timeline(root)) == sorted(set(timeline(root)))  # every stage ran once


def test_a_corrupted_file_in_the_dvc_cache_is_named_when_outputs_are_restored_from_it(completed, tmp_path):
    root = copy_project(completed.root, tmp_path / "toy")
    good = (root / "models" / "a-1" / "model.txt").read_bytes()
    for f in (root / ".dvc" / "cache" / "files").rglob("*"):
        if f.is_file() and f.read_bytes() == good:  # bit rot in the cache copy
            f.chmod(0o644)
            f.write_bytes(b"rotten\n")
    with open(root / "step.py", "a") as f:  # new code: every stage runs again
        f.write("# changed\n")
    (root / ".fail-always").mkdir()
    (root / ".fail-always" / "finetune-a-1").touch()
    with pytest.raises(Exception, match=r"finetune@a-1 failed: .*; and finetune@a-1: models/a-1 came from the "
                                        r"DVC cache but no longer match their recorded hashes: the cache copy is "
                                        r"corrupted"):
        run(root, retries=0)


def test_a_known_error_is_not_retried_and_the_last_good_outputs_come_back(completed, tmp_path):
    root = copy_project(completed.root, tmp_path / "toy")
    (root / "attempts.log").unlink()
    with open(root / "step.py", "a") as f:  # new code: every stage runs again
        f.write("# changed\n")
    (root / ".fail-always").mkdir()
    (root / ".fail-always" / "finetune-a-1").touch()
    with pytest.raises(Exception, match=r"finetune@a-1 failed: finetune-a-1: failing, as asked \(not retried: a "
                                        r"known error") as failed:
        run(root, retries=2, retry_delay_s=0.1)
    assert "\n" not in str(failed.value)
    assert attempts(root, "finetune-a-1") == 1
    # DVC deleted the stage's outputs before running it; the flow put the cached ones back
    assert (root / "models" / "a-1" / "model.txt").read_text() == "a trained on 1\n"
    assert (root / "results" / "a-1" / "metrics.json").exists()


def broken_lock(text: str) -> str:
    """dvc.lock as a kill during DVC's in-place write leaves it: cut short where DVC's schema refuses it."""
    from labelbudget.orchestrate.lockfile import problem

    cut = next(n for n in range(len(text) // 2, len(text)) if problem(text[:n]) is not None)
    return text[:cut]


def test_a_dvc_lock_left_half_written_by_a_kill_is_put_back_and_the_run_goes_on(completed, tmp_path):
    root = copy_project(completed.root, tmp_path / "toy")
    good = (root / "dvc.lock").read_text()
    (root / "dvc.lock").write_text(broken_lock(good))
    plain = subprocess.run([*DVC, "repro", "-s", "report"], cwd=root, capture_output=True, text=True)
    assert plain.returncode != 0 and DVC_REFUSED.search(plain.stdout + plain.stderr)  # what a stage's DVC says
    result = run(root)
    assert set(result["stages"].values()) == {UP_TO_DATE}  # the copy the last run kept
    assert (root / "dvc.lock").read_text() == good
    assert (root / ".dvc" / "tmp" / "dvc.lock.broken").read_text() == broken_lock(good)
    assert dvc_status(root) == {}


def test_a_dvc_lock_broken_during_a_run_is_put_back_and_the_stages_are_retried(prefect_api, fresh_toy, tmp_path):
    root = copy_project(fresh_toy, tmp_path / "toy")
    (root / ".break-lock-once").mkdir()
    (root / ".break-lock-once" / "finetune-a-1").touch()
    result = run(root, retries=3, retry_delay_s=0.1)
    # a stage beside it whose lock write the broken file refused is retried: DVC restores it from its run cache
    assert set(result["stages"].values()) <= {"ran", "restored from run-cache"}
    assert result["stages"]["finetune@a-1"] == "ran"
    assert attempts(root, "finetune-a-1") == 2  # killed once; the attempt DVC refused never started it
    assert (root / ".dvc" / "tmp" / "dvc.lock.broken").read_text().endswith("\n[")
    assert dvc_status(root) == {}


def test_stages_a_repair_rolled_back_are_recorded_again_from_the_workspace(completed, tmp_path):
    import yaml

    from labelbudget.orchestrate.lockfile import recommit

    root = copy_project(completed.root, tmp_path / "toy")
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    del lock["stages"]["finetune@b-1"]  # the older copy a repair put back did not have it yet
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    assert "finetune@b-1" in dvc_status(root)
    assert recommit(root, ["finetune@a-1", "finetune@b-1"]) == ["finetune@b-1"]
    assert dvc_status(root) == {}
    assert attempts(root, "finetune-b-1") == attempts(completed.root, "finetune-b-1")  # recorded, not re-run


def test_a_broken_dvc_lock_without_a_good_copy_says_how_to_recover(completed, tmp_path):
    from labelbudget.orchestrate.lockfile import LockfileError, repair

    root = copy_project(completed.root, tmp_path / "toy")
    (root / ".dvc" / "tmp" / "dvc.lock.good").unlink()
    (root / "dvc.lock").write_text(broken_lock((root / "dvc.lock").read_text()))
    with pytest.raises(LockfileError, match=r"dvc.lock .*no good copy .*\(`git checkout dvc.lock`\)"):
        repair(root)


def test_a_dvc_lock_with_merge_conflict_markers_is_not_replaced(completed, tmp_path):
    from labelbudget.orchestrate.lockfile import LockfileError, repair

    root = copy_project(completed.root, tmp_path / "toy")
    text = (root / "dvc.lock").read_text()
    conflicted = f"<<<<<<< HEAD\n{text}=======\n{text}>>>>>>> other\n"
    (root / "dvc.lock").write_text(conflicted)
    with pytest.raises(LockfileError, match="merge-conflict markers"):
        repair(root)
    assert (root / "dvc.lock").read_text() == conflicted


def test_fresh_machine_pulls_finished_stages_from_the_dvc_remote(completed, tmp_path):
    root = copy_project(completed.root, tmp_path / "toy")
    for path in ("data", "models", "results", "reports", ".dvc/cache"):
        shutil.rmtree(root / path)
    run(root, remote=str(completed.remote))
    recomputed = set(timeline(root)[len(completed.timeline) :])
    # only stages whose outputs are not cached (cache: false) run again; the rest come from the remote
    assert recomputed <= {"validate", "report"}
    assert json.loads((root / "reports" / "metrics.json").read_text()) == completed.metrics
    assert dvc_status(root) == {}


def test_dask_task_runner_runs_the_toy_dag(prefect_api, tmp_path):
    root = create_toy_project(tmp_path / "toy", models=("a",), budgets=(1,))
    result = run(root, task_runner="dask", concurrency=2)  # a LocalCluster: threads, no processes
    assert set(result["stages"].values()) == {"ran"} and len(result["stages"]) == 6
    assert dvc_status(root) == {}


# ------------------------------------------------------------------------------------------ no Prefect run


@pytest.mark.parametrize(("exit_code", "retried"), [(-9, True), (137, True), (143, True), (3, False), (1, False),
                                                    (139, False)])
def test_only_a_kill_is_retried_whether_the_shell_reports_it_as_a_signal_or_as_128_plus_it(exit_code, retried):
    output = f"ERROR: failed to reproduce 'x': failed to run: python step.py x, exited with {exit_code}"
    assert classify("x", output).retry is retried


def test_selection_keeps_what_the_targets_need(fresh_toy):
    dag = load_dag(fresh_toy)
    assert list(dag.select(["evaluate@b-1"]).stages) == [
        "corpus",
        "validate",
        "subsets",
        "finetune@b-1",
        "evaluate@b-1",
    ]
    assert len(dag.select(["finetune"]).stages) == 5
    with pytest.raises(ValueError, match="unknown stage"):
        dag.select(["pretrain"])


def test_metrics_table_has_one_row_per_run():
    table = metrics_markdown(
        {"small": {"60": {"in_domain": 0.31234, "weighted": 0.4}}, "fbank": {"60": {"weighted": 0.5}}}
    )
    assert "| small/60 | 0.3123 | 0.4 |" in table
    assert "| fbank/60 |  | 0.5 |" in table
    records = metrics_markdown([{"upstream": "small", "budget": 60, "weighted": 0.4}])
    assert records.splitlines()[0] == "| upstream | budget | weighted |"


def test_run_command_explains_itself(capsys):
    from labelbudget.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "temporary" in out and "--set KEY=VALUE" in out and "--task-runner {threads,dask}" in out
    assert "dvc exp run" in out or "Hydra" in out or "~upstreams.large" in out
