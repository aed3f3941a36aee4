"""Known failures, and how a stage reports them: one line a person can act on, the traceback in a log file.

A `LabelbudgetError` is deterministic (bad params, a corpus that is not there, a budget larger than the pool, a
failed data gate...): running the same thing again gives the same error, so the flow never retries it. Stage
scripts exit with `EXIT_KNOWN` for these, which is how the flow tells them from a crash a retry can fix.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

EXIT_KNOWN = 3  # a stage's exit code for a known, deterministic failure (argparse uses 2 for usage errors)
ERROR_LOG = Path(".dvc") / "tmp" / "labelbudget-errors.log"  # tracebacks of known errors, per project
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


class LabelbudgetError(Exception):
    """A failure with a clear cause that the same inputs reproduce: shown as one line, never retried."""


class ParamsError(LabelbudgetError, ValueError):
    """params.yaml (or an override) breaks the schema: names the key, the value and what is allowed."""


class CorpusError(LabelbudgetError, ValueError):
    """The corpus to ingest is empty or malformed."""


class CorpusNotFoundError(CorpusError, FileNotFoundError):
    """A folder or file the corpus params name is not there."""


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def known(e: BaseException) -> str | None:
    """The one-line message of a failure a person can act on, or None for an unexpected crash."""
    if isinstance(e, LabelbudgetError):
        return one_line(e)
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:  # full disk, read-only or forbidden folder
        where = f" writing {e.filename}" if e.filename else ""
        return f"{e.strerror or errno.errorcode.get(e.errno, e.errno)}{where}"
    return None


def log_traceback(name: str, e: BaseException, log: Path = ERROR_LOG) -> Path | None:
    """Append the traceback to the project's error log (only where the project has a .dvc/tmp)."""
    if not log.parent.is_dir():
        return None
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"--- {name}\n{''.join(traceback.format_exception(e))}")
    return log


def run_stage(main: Callable[[], int | None], warm: bool = False) -> int:
    """Run a stage script's main: a known failure prints `error: <message>` and returns EXIT_KNOWN (the
    traceback goes to the project's error log); anything else raises with its traceback, as a crash should.
    `warm`: run it in a child of the flow's fork server when there is one (labelbudget.forkserver), which has
    torch and Lightning imported already."""
    if warm:
        from labelbudget import forkserver

        status = forkserver.delegate()
        if status is not None:
            return forkserver.exit_like(status)
    try:
        return main() or 0
    except Exception as e:  # noqa: BLE001 - sorted into known and unexpected right here
        message = known(e)
        if message is None:
            raise
        log = log_traceback(" ".join(sys.argv), e)
        print(f"error: {message}" + (f"  (traceback: {log})" if log else ""), file=sys.stderr)
        return EXIT_KNOWN
