"""Why a stage failed, in one line, and whether a retry can fix it; what is put back after a failure."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from prefect import get_run_logger

from labelbudget.errors import EXIT_KNOWN
from labelbudget.orchestrate.stopping import interrupted


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
    if interrupted():
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


def should_retry(task, task_run, state) -> bool:
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


def corruption(stage: str, paths: list[str]) -> str:
    return (f"{stage}: {', '.join(paths)} came from the DVC cache but no longer match their recorded hashes: the "
            "cache copy is corrupted. Delete the output and its file under .dvc/cache, then run again")
