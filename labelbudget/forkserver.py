"""A warm interpreter for the many short stages: a server that imports torch, Lightning and W&B once and forks a
child for each stage script that asks for it (Bazel's persistent workers, Python's forkserver).

A default experiment runs 64 finetune and evaluate stages; each would otherwise spend 2-7 s of its ~15 importing
the same libraries (Lightning alone ~5 s on 2 cores). The flow starts the server (`serving`) and names its
socket in the stage environment (`ADDRESS_VAR`); DVC still runs every stage's command, and the script's
`run_stage` hands its argv, working folder, environment and stdin/stdout/stderr to the server, waits, and exits
with the child's status. Nothing of labelbudget is imported before the fork: the child runs the script from disk,
as a fresh `python` would. Without a server (plain `dvc repro`, a server that is not up yet) the script runs in
its own process, as before.

Each request gets a handler process that forks the runner and watches the client: a client that goes away (the
flow stopped the stage's process group) takes its runner with it.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

ADDRESS_VAR = "LABELBUDGET_FORKSERVER"  # the server's socket; unset, empty or unreachable: run in-process
# What the short stages import: torch, Lightning (which pulls in torchmetrics and torch._dynamo), W&B, jiwer.
PRELOAD = ("numpy", "torch", "lightning.pytorch", "wandb", "jiwer", "pydantic", "yaml")
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")  # exit code >= 0, or -signal


# ----------------------------------------------------------------------------------------------- client side
def delegate() -> int | None:
    """Run this stage script in a child of the server; its exit status (-N: killed by signal N), or None when
    there is no server to ask (the caller then runs the stage itself)."""
    address = os.environ.get(ADDRESS_VAR)
    if not address:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        return None
    env = {k: v for k, v in os.environ.items() if k != ADDRESS_VAR}  # the child runs in-process
    request = json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": env}).encode()
    sys.stdout.flush()
    sys.stderr.flush()
    with sock:
        try:
            socket.send_fds(sock, [_HEADER.pack(len(request))], [0, 1, 2])
        except OSError:  # a closed stdin/stdout/stderr: nothing to hand over
            return None
        sock.sendall(request)
        reply = _recv_exactly(sock, _STATUS.size)
    if reply is None:
        print(f"error: the stage worker ({address}) went away before the stage ended", file=sys.stderr)
        return 1
    return _STATUS.unpack(reply)[0]


def exit_like(status: int) -> int:
    """The exit code for a status from `delegate`; a child killed by signal N kills this process with N, so
    DVC and the flow see what they would have seen."""
    if status < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler to reset
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


# ----------------------------------------------------------------------------------------------- server side
def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _run_script(request: dict, fds: list[int]) -> None:
    """In the runner: become the stage script's process and run it as `python <script> <args>` would."""
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[0] = str(Path(sys.argv[0]).resolve().parent)
    code: int | str | None = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, then the same exit code
        traceback.print_exc()
        code = 1
    if isinstance(code, str):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # what interpreter shutdown runs: W&B's teardown, Lightning's and torch's hooks
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0) & 0xFF)


def _handle(conn: socket.socket) -> None:
    """In the handler: fork the runner, report its status, kill it if the client goes away first."""
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    msg, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    body = _recv_exactly(conn, _HEADER.unpack(msg)[0]) if len(msg) == _HEADER.size and len(fds) == 3 else None
    if body is None:
        os._exit(1)
    pid = os.fork()
    if pid == 0:
        try:
            conn.close()
            _run_script(json.loads(body), fds)
        finally:
            os._exit(1)  # never back into the handler's code
    for fd in fds:
        os.close(fd)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        readable, _, _ = select.select([conn], [], [], 0.2)
        if readable and not conn.recv(1, socket.MSG_PEEK):  # the client is gone: so is the stage
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os._exit(0)
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):
        conn.sendall(_STATUS.pack(code))
    os._exit(0)


def serve(address: str, preload: tuple[str, ...] = PRELOAD) -> None:
    """Import `preload`, then listen on `address` and fork a handler per request until SIGTERM."""
    import importlib

    for name in preload:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # The imported modules' objects are never garbage: out of the collector's sight, a child's collections
    # neither walk them nor write to their pages (each write would copy a page shared with the server).
    gc.collect()
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address + ".tmp")
    os.replace(address + ".tmp", address)  # clients see the socket only once it accepts
    listener.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            while True:  # reap finished handlers
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(-1, os.WNOHANG)[0]:
                        continue
                break
            if not select.select([listener], [], [], 1.0)[0]:
                continue
            conn, _ = listener.accept()
            if os.fork() == 0:
                try:
                    listener.close()
                    _handle(conn)
                finally:
                    os._exit(1)  # never back into the server's loop (nor its clean-up)
            conn.close()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)


@contextlib.contextmanager
def serving(log: Path | None = None, preload: tuple[str, ...] = PRELOAD) -> Iterator[str]:
    """A server for the duration of the block; yields its address (for `ADDRESS_VAR` in stage environments).
    The address is usable at once: scripts run in-process until the server has imported `preload`."""
    folder = tempfile.mkdtemp(prefix="labelbudget-fork-")  # short: socket paths are limited to ~100 bytes
    address = os.path.join(folder, "socket")
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "labelbudget.forkserver", address, *preload],
                            stdin=subprocess.DEVNULL,
                            stdout=out, stderr=out, start_new_session=True)
    try:
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out is not subprocess.DEVNULL:
            out.close()
        for leftover in (address, address + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        with contextlib.suppress(OSError):
            os.rmdir(folder)


if __name__ == "__main__":  # python -m labelbudget.forkserver ADDRESS [MODULE ...]
    serve(sys.argv[1], tuple(sys.argv[2:]))
