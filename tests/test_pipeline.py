"""End to end: `dvc repro` of the smoke profile in a temporary copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labelbudget.config import PARAMS_LOG

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "offline", "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "false",
       "LABELBUDGET_THREADS": "2"}


def copy_project(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dst, check=True)
    return dst


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def smoke_project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("project"))
    run(["labelbudget", "profile", "smoke"], project)
    run(["dvc", "repro"], project, env={PARAMS_LOG: str(project / "params-read.jsonl")})
    return project


@pytest.mark.slow
def test_dvc_repro_writes_every_stage_output(smoke_project):
    p = smoke_project
    assert (p / "data/corpus/manifests/labeled.jsonl").exists()
    assert json.loads((p / "data/validation/report.json").read_text())["passed"] is True
    assert (p / "data/subsets/1min-seed0.txt").read_text().strip()
    for size in ("small", "large"):
        assert (p / f"models/pretrain/{size}/model.pt").exists()
    for up in ("small", "large", "fbank", "random"):
        assert (p / f"data/features/{up}/upstream.json").exists()
    # the phone probe: every layer of every upstream scored, fbank well above the majority class
    probes = {up: json.loads((p / f"results/probe/{up}/metrics.json").read_text())
              for up in ("small", "large", "fbank", "random")}
    assert {up: len(r["accuracy"]) for up, r in probes.items()} == {"small": 3, "large": 3, "fbank": 1, "random": 3}
    assert probes["fbank"]["best"] > 2 * probes["fbank"]["chance"]["weighted"]
    for size in ("small", "large"):  # the monitor during pretraining, in the history and the summary
        pm = json.loads((p / f"models/pretrain/{size}/metrics.json").read_text())
        assert 0 < pm["probe/phone_acc"] <= 1 and "probe/phone_acc" in (p / f"models/pretrain/{size}/history.csv"
                                                                         ).read_text()
    metrics = json.loads((p / "reports/metrics.json").read_text())
    assert set(metrics["phone_probe"]) == {"small", "large", "fbank", "random"}
    assert set(metrics["findings"].values()) <= {"holds", "does not hold", "inconclusive", "invalid"}
    # the downstream converges: every run stopped by patience, none hit max_steps or stayed all-blank
    conv = metrics["converged_runs"]
    assert conv["runs"] == 8 and conv["converged"] >= 0.9 * conv["runs"] and conv["valid"] is True
    assert "## Linear phone probe" in (p / "reports/results.md").read_text()
    assert (p / "reports/figures/phone_probe.png").exists()
    assert len((p / "reports/phone_probe.csv").read_text().splitlines()) == 1 + 3 + 3 + 1 + 3


@pytest.mark.slow
def test_second_repro_is_a_no_op_and_status_clean(smoke_project):
    r = run(["dvc", "repro"], smoke_project)
    assert "Running stage" not in r.stdout
    status = run(["dvc", "status"], smoke_project)
    assert "up to date" in status.stdout


@pytest.mark.slow
def test_dvc_metrics_and_plots_show_work(smoke_project):
    assert "weighted" in run(["dvc", "metrics", "show"], smoke_project).stdout
    run(["dvc", "plots", "show", "--out", "plots"], smoke_project)
    assert (smoke_project / "plots" / "index.html").exists()


@pytest.mark.slow
def test_wandb_offline_runs_hold_pretraining_metrics(smoke_project):
    logs = [f.read_bytes() for f in (smoke_project / "wandb").glob("offline-run-*/run-*.wandb")]
    # one W&B run per pretraining (2), finetune (4 upstreams x 2 budgets) and the report
    assert len(logs) == 2 + 8 + 1
    # Offline runs keep history and summary only in their binary log, where keys are stored as plain strings
    pretraining = [d for d in logs if b"pretrain" in d and b"train/loss" in d]
    assert len(pretraining) == 2 and all(b"train/masked_acc" in d and b"probe/phone_acc" in d for d in pretraining)
    assert sum(b"test/in_domain/wer" in d for d in logs) >= 8  # every finetune's summary
    from wandb_records import offline_runs

    runs = offline_runs(smoke_project)
    report = [(d, c) for d, c in runs if c["config"].get("judged_on")]
    assert len(report) == 1
    run_dir, contents = report[0]
    logged = contents["history"][0]
    rows = json.loads((run_dir / "files" / logged["results/path"]).read_text())["data"]
    assert len(rows) == 8 * (3 + 1)  # every finetune x (the smoke profile's 3 test sets + weighted)
    assert {f"_wandb/visualize/charts/weighted_{m}" for m in ("wer", "cer")} <= set(contents["config"])
    finetunes = [c["config"] for _, c in runs if "budget_hours" in c["config"]]
    assert len(finetunes) == 8 and all(c["profile"] == "smoke" and c["kind"] for c in finetunes)


@pytest.mark.slow
def test_transcribe_reproduces_the_evaluation_of_a_finished_finetune(smoke_project, tmp_path):
    p = smoke_project
    out = tmp_path / "hyps.jsonl"
    r = run(["labelbudget", "transcribe", "models/finetune/fbank-2-0", "--manifest",
             "data/corpus/manifests/test-in_domain.jsonl", "--root", "data/corpus/audio", "--out", str(out)], p)
    assert "WER" in r.stdout
    got = {row["id"]: row["hyp"] for row in map(json.loads, out.read_text().splitlines())}
    evaluated = [json.loads(line) for line in (p / "results/eval/fbank-2-0/hyps.jsonl").read_text().splitlines()]
    want = {row["id"]: row["hyp"] for row in evaluated if row["test_set"] == "in_domain"}
    assert got == want  # the same upstream and model: the same hypotheses as the evaluate stage


# Read on purpose without being a param: finetune checks the evaluation weights against the test sets before
# training, but they do not change the model (dvc.yaml says so beside the stage).
# Reads that must not re-run a stage: the weights only checked early; W&B's settings and the grouping labels
# (labelbudget.tracking.group_keys: profile, the upstream's kind/size and the objective) of a run's config.
GROUP_LABELS = {"profile", "upstreams.", "toplines.", "pretrain.objective", "wandb."}
READ_UNDECLARED = {"finetune": {"evaluate.weights", *GROUP_LABELS}, "pretrain": GROUP_LABELS, "topline": GROUP_LABELS,
                   "report": GROUP_LABELS}


@pytest.mark.slow
def test_every_param_a_stage_reads_is_declared_in_dvc_yaml(smoke_project):
    from dvc.repo import Repo

    repo = Repo(str(smoke_project))
    declared = {}
    for stage in repo.index.stages:
        keys = [k for d in stage.deps if type(d).__name__ == "ParamsDependency" for k in d.params]
        declared[stage.cmd.split(" ", 2)[2]] = (stage.name, keys)
    records = [json.loads(line) for line in (smoke_project / "params-read.jsonl").read_text().splitlines()]
    assert len(records) == len(declared)  # every stage process ran with the recorder
    for r in records:
        name, keys = declared[" ".join(r["argv"])]
        allowed = READ_UNDECLARED.get(name.split("@")[0], set())
        undeclared = [k for k in r["keys"] if not any(k == a or (a.endswith(".") and k.startswith(a)) for a in allowed)
                      and not any(k == d or k.startswith(d + ".") for d in keys)]
        assert not undeclared, f"stage {name} reads params it does not declare in dvc.yaml: {undeclared}"


@pytest.mark.slow
def test_every_param_a_stage_declares_is_read_by_it(smoke_project):
    """The other direction: a declared key nobody reads re-runs a stage for nothing. Checked per stage (every
    instance of a foreach/matrix stage declares the same keys; together they read each of them)."""
    from dvc.repo import Repo

    repo = Repo(str(smoke_project))
    by_cmd = {stage.cmd.split(" ", 2)[2]: stage for stage in repo.index.stages}
    read: dict[str, set[str]] = {}
    declared: dict[str, set[str]] = {}
    for line in (smoke_project / "params-read.jsonl").read_text().splitlines():
        r = json.loads(line)
        stage = by_cmd[" ".join(r["argv"])]
        group = stage.name.split("@")[0]
        keys = {k for d in stage.deps if type(d).__name__ == "ParamsDependency" for k in d.params}
        declared.setdefault(group, set()).update(k for k in keys if "@" not in stage.name or not k.startswith(
            ("models.", "upstreams.", "toplines.")))  # per-instance keys: checked by the instance below
        read.setdefault(group, set()).update(r["keys"])
        instance = stage.name.split("@")[-1]
        for k in keys & {f"models.{instance}", f"upstreams.{instance}"}:
            assert any(x == k or x.startswith(k + ".") for x in r["keys"]), f"{stage.name} declares {k}, reads none"
    for group, keys in declared.items():
        unread = sorted(k for k in keys if not any(x == k or x.startswith(k + ".") for x in read[group]))
        assert not unread, f"stage {group} declares params it never reads: {unread}"


def stale_after(project: Path, override: str) -> set[str]:
    """Stages `dvc status` reports changed once params.yaml holds `override` (the composition put back after)."""
    from labelbudget.profiles import PARAMS, STATE

    saved = {f: (project / f).read_bytes() for f in (PARAMS, STATE)}
    try:
        run(["labelbudget", "profile", "smoke", "--set", override], project)
        out = run(["dvc", "status", "--json"], project).stdout
    finally:
        for f, data in saved.items():
            (project / f).write_bytes(data)
    return set(json.loads(out))


@pytest.mark.slow
def test_a_params_change_re_runs_what_it_affects_and_nothing_else(smoke_project):
    # `dvc status` lists the stages whose own dependencies changed; the DAG re-runs what depends on them
    assert stale_after(smoke_project, "wandb.group=renamed") == {"report"}  # W&B labels retrain nothing
    finetunes = {f"finetune@{u}-{b}-0" for u in ("small", "large", "fbank", "random") for b in (1, 2)}
    assert stale_after(smoke_project, "finetune.lr=0.002") == finetunes  # then their evaluations and the report
    # a size's shape: its pretraining and the shape file of the never-trained control; no fbank stage, no `small`
    assert stale_after(smoke_project, "models.large.dim=96") == {"shape@large", "pretrain@large"}


# Stages killed with SIGKILL part-way, in this order (each after its upstream finished), at a fault point of
# their own: the first file that shows the stage is half done (a synthesized clip in the corpus's temporary
# folder, a periodic checkpoint, a complete feature shard, the finetune's W&B run). The rerun must end with the
# same outputs as the uninterrupted run.
KILLED = {"corpus": "data/.corpus.*.tmp/**/*.flac", "pretrain@small": "models/pretrain/small/checkpoints/*.ckpt",
          "extract@small": "data/features/small/*/shard-*.npy", "finetune@small-1-0": "wandb/offline-run-*"}


def kill_at(project: Path, stage: str, point: str) -> bool:
    """Start `dvc repro -s stage`, SIGKILL its whole process group once a new file matches the glob `point`;
    True if the stage was still running then."""
    import signal
    import time

    before = set(project.glob(point))
    proc = subprocess.Popen(["dvc", "repro", "-s", stage], cwd=project, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and not set(project.glob(point)) - before:
        time.sleep(0.02)
    running = proc.poll() is None
    if running:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return running


def lock_md5(project: Path) -> dict[str, str]:
    import yaml

    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for s in stages.values() for out in s.get("outs", [])}


@pytest.mark.slow
def test_kill_9_part_way_through_each_stage_then_rerun_gives_the_uninterrupted_outputs(smoke_project, tmp_path):
    import torch

    from labelbudget.orchestrate import lockfile
    from labelbudget.orchestrate.dag import load_dag

    project = copy_project(tmp_path / "project")
    run(["labelbudget", "profile", "smoke"], project)
    dag = load_dag(project)
    interrupted = []
    for stage, point in KILLED.items():
        for up in dag.stages[stage].upstream:
            run(["dvc", "repro", up], project)
        lockfile.snapshot(project)
        if kill_at(project, stage, point):
            interrupted.append(stage)
        lockfile.repair(project)  # as `labelbudget run` does first: the kill may have hit DVC's dvc.lock write
        run(["dvc", "repro", "-s", stage], project)  # the rerun, over whatever the kill left
    compared = ["evaluate@small-1-0", "extract@fbank"]  # what the checks below read, and what they need
    run(["dvc", "repro", *compared], project)
    assert interrupted == list(KILLED), f"only {interrupted} were still running at their fault point"

    want, got = lock_md5(smoke_project), lock_md5(project)
    for path in ("data/corpus", "data/subsets"):
        assert got[path] == want[path], path
    for up in ("small", "fbank"):  # the arrays (their meta.json also holds timings)
        arrays = sorted(p.relative_to(smoke_project) for p in (smoke_project / "data/features" / up).rglob("*.npy"))
        assert arrays
        for a in arrays:
            assert (project / a).read_bytes() == (smoke_project / a).read_bytes(), a
    for model in ("models/pretrain/small/model.pt", "models/finetune/small-1-0/model.pt"):
        a, b = (torch.load(p / model, map_location="cpu", weights_only=False) for p in (smoke_project, project))
        weights = [k for k in a if isinstance(a[k], dict) and any(torch.is_tensor(v) for v in a[k].values())]
        for k in weights:
            for name, tensor in a[k].items():
                assert torch.equal(tensor, b[k][name]), f"{model}: {k}.{name}"
    hyps = "results/eval/small-1-0/hyps.jsonl"
    assert (project / hyps).read_bytes() == (smoke_project / hyps).read_bytes()
    assert not list(project.rglob(".*.tmp")), "a killed stage's temporary files were left behind"
    status = subprocess.run(["dvc", "status", "--json", "--with-deps", *compared], cwd=project, capture_output=True,
                            text=True, check=True)
    assert json.loads(status.stdout) == {}


@pytest.mark.slow
def test_adding_the_topline_runs_only_its_stages_and_the_report_judges_it(smoke_project, tmp_path):
    project = tmp_path / "calibrated"
    shutil.copytree(smoke_project, project, symlinks=True)
    run(["labelbudget", "profile", "smoke", "--set", "+toplines.topline={size: large, objective: phones}",
         "--set", "+upstreams.topline={kind: ssl, source: models/pretrain/topline/model.pt}"], project)
    r = run(["dvc", "repro"], project)
    ran = {line.split("'")[1] for line in r.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"topline@topline", "extract@topline", "probe@topline", "finetune@topline-1-0",
                   "finetune@topline-2-0", "evaluate@topline-1-0", "evaluate@topline-2-0", "report"}
    pm = json.loads((project / "models/pretrain/topline/metrics.json").read_text())
    assert pm["objective"] == "phones" and pm["upstream"] == "topline" and 0 < pm["probe/phone_acc"] <= 1
    metrics = json.loads((project / "reports/metrics.json").read_text())
    verdicts = {"holds", "does not hold", "inconclusive", "invalid"}
    assert set(metrics["comparisons"]) == {"topline-vs-random", "small-vs-random", "large-vs-random",
                                           "large-vs-small"}
    assert all(set(v) == {"1", "2"} and set(v.values()) <= verdicts for v in metrics["comparisons"].values())
    assert metrics["calibration"]["topline"] == "topline" and metrics["calibration"]["verdict"] in verdicts
    assert set(metrics["calibration"]["error_gap_share"]) == {"small", "large"}
    results = (project / "reports/results.md").read_text()
    assert "## Calibration (not SSL)" in results and "## Per-budget comparisons" in results
    assert "topline" not in json.dumps(metrics["findings"])  # never counted in F0-F3
