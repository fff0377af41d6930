"""Which failures the I/O tasks retry: transient ones only, never bad input."""

from __future__ import annotations

import pytest

from pipelines.errors import PipelineError
from pipelines.tasks import _retry_io


class _Failed:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc

    def result(self):
        if self.exc is not None:
            raise self.exc
        return "ok"


class OperationalError(Exception):
    """Stands in for sqlalchemy.exc.OperationalError (matched by message, not by class)."""


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (ConnectionError("refused"), True),
        (TimeoutError(), True),
        (OSError("disk hiccup"), True),
        (OperationalError("(sqlite3.OperationalError) database is locked"), True),
        (PipelineError("bad input"), False),
        (FileNotFoundError("prices.csv"), False),
        (ValueError("a bug"), False),
        (None, False),
    ],
)
def test_retry_only_transient_failures(exc, retried):
    assert _retry_io(None, None, _Failed(exc)) is retried
