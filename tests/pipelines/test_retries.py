"""Every transient retry is noted: a warning with a fixed prefix and a line in the count file."""

from __future__ import annotations

import logging

from pipelines.errors import PipelineError
from pipelines.retries import RETRY_LOG_ENV, RETRY_PREFIX, count_retries, note_retry
from pipelines.tasks import _retry_io
from pipelines.tracking.runs import _is_duplicate_key


class _Failed:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


class _Task:
    name = "log-run"


def test_retries_are_counted_in_the_file_and_logged(tmp_path, monkeypatch, caplog):
    path = tmp_path / "retries.log"
    monkeypatch.setenv(RETRY_LOG_ENV, str(path))
    assert count_retries(path) == 0
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        assert _retry_io(_Task(), None, _Failed(ConnectionError("refused"))) is True
        assert _retry_io(_Task(), None, _Failed(PipelineError("bad input"))) is False
        note_retry("log_dataset (duplicate key)", RuntimeError("UNIQUE constraint\nfailed"))
    assert count_retries(path) == 2
    lines = path.read_text().splitlines()
    assert "task log-run" in lines[0] and "ConnectionError: refused" in lines[0]
    assert "UNIQUE constraint failed" in lines[1]  # one line per retry
    assert [r.message.split()[0] for r in caplog.records] == [RETRY_PREFIX] * 2


def test_without_the_env_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(RETRY_LOG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    note_retry("somewhere", OSError("hiccup"))
    assert list(tmp_path.iterdir()) == []


def test_postgres_duplicate_key_is_recognised_like_sqlite():
    pg = "(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint"
    assert _is_duplicate_key(RuntimeError(pg))
    assert _is_duplicate_key(RuntimeError("UNIQUE constraint failed: datasets.name"))
    assert not _is_duplicate_key(RuntimeError("connection refused"))
