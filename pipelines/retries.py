"""Every transient-error retry of the pipeline is noted here, so it can be counted.

A retry is a warning on the `pipelines` logger starting with `RETRY_PREFIX`, and, when
the environment variable `RETRY_LOG_ENV` names a file, one line appended to that file
(processes of a Dask fan-out inherit it, so one file counts the retries of all of them).
"""

from __future__ import annotations

import logging
import os
import time

RETRY_PREFIX = "transient-retry"
RETRY_LOG_ENV = "LSTM_PIPELINE_RETRY_LOG"
# What a server logs when its database refuses or races a write.
DB_CONFLICTS = (
    "database is locked",
    "UniqueViolation",
    "duplicate key",
    "IntegrityError",
    "deadlock detected",
    "could not serialize",
)

log = logging.getLogger("pipelines")


def note_retry(site: str, exc: BaseException) -> None:
    """Record that `site` retries after `exc` (one line: prefix, site, pid, error)."""
    error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    line = f"{RETRY_PREFIX} {site} pid={os.getpid()} {error}"
    log.warning(line)
    path = os.environ.get(RETRY_LOG_ENV)
    if path:
        # One short write with O_APPEND: lines from concurrent processes do not interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{time.time():.3f} {line}\n".encode())
        finally:
            os.close(fd)


def count_retries(path: str | os.PathLike[str]) -> int:
    """Retries noted in a `RETRY_LOG_ENV` file (0 when it does not exist)."""
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if RETRY_PREFIX in line)
    except FileNotFoundError:
        return 0


def conflict_lines(log_text: str) -> list[str]:
    """The lines of a server log that report a database conflict (`DB_CONFLICTS`)."""
    return [line for line in log_text.splitlines() if any(c in line for c in DB_CONFLICTS)]
