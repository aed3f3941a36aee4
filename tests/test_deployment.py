"""prefect.yaml deploys and runs for real: a Prefect server on loopback, a process work pool, the smoke
deployment triggered over a toy DVC project, and one worker pass that runs it. Every process started here
is stopped, even when the test fails."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
from toy_project import create_toy_project  # noqa: E402

pytestmark = pytest.mark.slow
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "labelbudget"  # the work pool prefect.yaml names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, with everything it started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    processes: list[subprocess.Popen] = []
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes.append(server)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not start in 120 s"
            time.sleep(0.5)
        yield env, processes
    finally:
        for proc in reversed(processes):
            stop(proc)
        log.close()


def prefect(env: dict[str, str], *args: str, cwd: Path = ROOT, timeout: float = 180) -> str:
    proc = subprocess.run(
        [*PREFECT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_smoke_deployment_runs_on_a_process_worker(prefect_server, tmp_path):
    env, processes = prefect_server
    toy = create_toy_project(tmp_path / "toy", models=("a",), budgets=(1,))
    prefect_yaml = (ROOT / "prefect.yaml").read_text()

    prefect(env, "work-pool", "create", POOL, "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--name", "smoke")
    assert (ROOT / "prefect.yaml").read_text() == prefect_yaml  # deploying does not rewrite it
    params = {"root": str(toy), "profile": None, "retry_delay_s": 0}
    out = prefect(env, "deployment", "run", "labelbudget-experiment/smoke", "--params", json.dumps(params))
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", POOL, "--run-once"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(worker)  # stopped by the fixture if anything below fails
        worker.wait(timeout=300)

    run = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=10).json()
    assert run["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-5000:]
    assert json.loads((toy / "reports" / "metrics.json").read_text()) == {"a-1": {"wer": 0.3333}}
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=toy, capture_output=True, text=True
    )
    assert json.loads(status.stdout) == {}
