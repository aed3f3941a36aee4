"""The fork server: a stage script handed to it behaves as if it ran in its own interpreter (output, exit status,
working folder, environment, signals), and a client that goes away takes its stage with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labelbudget import forkserver

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from labelbudget.errors import run_stage

    def main():
        print("cwd", os.getcwd())
        print("argv", sys.argv[1:])
        print("var", os.environ.get("PROBE_VAR"))
        print("in server child", "colorsys" in sys.modules)  # what the test's server preloads
        print("to stderr", file=sys.stderr)
        what = sys.argv[1]
        if what == "crash":
            raise RuntimeError("boom")
        if what == "signal":
            os.kill(os.getpid(), signal_number := 9)
        if what == "sleep":
            Path("runner.pid").write_text(str(os.getpid()))
            time.sleep(60)
        return int(what)

    if __name__ == "__main__":
        sys.exit(run_stage(main, warm=True))
""")


@pytest.fixture
def server(tmp_path: Path):
    with forkserver.serving(tmp_path / "server.log", preload=("colorsys",)) as address:
        deadline = time.monotonic() + 30
        while not os.path.exists(address):  # the socket appears once the preload is done
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.05)
        yield address


def run(tmp_path: Path, address: str | None, *args: str, **kw) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "PROBE_VAR": "seen"}
    env.pop(forkserver.ADDRESS_VAR, None)
    if address:
        env[forkserver.ADDRESS_VAR] = address
    return subprocess.run([sys.executable, str(script), *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=60, **kw)


def test_script_run_by_the_server_behaves_as_in_its_own_interpreter(tmp_path, server):
    cold, warm = run(tmp_path, None, "7"), run(tmp_path, server, "7")
    assert (warm.returncode, cold.returncode) == (7, 7)
    assert "in server child True" in warm.stdout and "in server child False" in cold.stdout
    strip = [line for line in warm.stdout.splitlines() if not line.startswith("in server")]
    assert strip == [line for line in cold.stdout.splitlines() if not line.startswith("in server")]
    assert f"cwd {tmp_path / 'work'}" in warm.stdout and "var seen" in warm.stdout
    assert warm.stderr == cold.stderr == "to stderr\n"


def test_crash_in_the_server_child_prints_its_traceback_and_exits_1(tmp_path, server):
    warm = run(tmp_path, server, "crash")
    assert warm.returncode == 1
    assert "RuntimeError: boom" in warm.stderr and "Traceback" in warm.stderr


def test_child_killed_by_a_signal_kills_the_client_with_it(tmp_path, server):
    assert run(tmp_path, server, "signal").returncode == -signal.SIGKILL


def test_no_server_runs_the_script_in_its_own_process(tmp_path):
    result = run(tmp_path, str(tmp_path / "no-such-socket"), "0")
    assert result.returncode == 0 and "in server child False" in result.stdout


def test_client_that_goes_away_takes_its_stage_with_it(tmp_path, server):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    (tmp_path / "work").mkdir()
    env = {**os.environ, forkserver.ADDRESS_VAR: server}
    client = subprocess.Popen([sys.executable, str(script), "sleep"], cwd=tmp_path / "work", env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = tmp_path / "work" / "runner.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runner = int(pid_file.read_text())
    assert runner != client.pid
    client.kill()
    client.wait()
    deadline = time.monotonic() + 10
    while _alive(runner):
        assert time.monotonic() < deadline, "the stage outlived its client"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_server_removes_its_socket_when_the_block_ends(tmp_path):
    with forkserver.serving(preload=()) as address:
        deadline = time.monotonic() + 30
        while not os.path.exists(address):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert not os.path.exists(address) and not os.path.exists(os.path.dirname(address))
