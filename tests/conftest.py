"""Shared test set-up: quiet, offline, everything under a temporary folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before any test module imports TensorFlow or Prefect.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory) -> Iterator[Path]:
    """One Prefect test API for the whole session. Yields a Prefect database migrated to this
    Prefect version and kept between sessions; the harness starts on a copy of it when there is
    one, and a server on a copy skips the migrations (most of a start on a new database)."""
    import sqlite3
    from unittest import mock

    import prefect
    import prefect.testing.utilities
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
    from prefect.testing.utilities import prefect_test_harness

    from pipelines.fsio import atomic_write

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    kept = Path(tempfile.gettempdir()) / "lstm-pipeline-tests" / f"prefect-{prefect.__version__}.db"

    def seeded_mkdtemp() -> str:  # the harness's database folder, with the kept database in it
        folder = tempfile.mkdtemp()
        if kept.exists():
            shutil.copyfile(kept, Path(folder) / "prefect-test.db")
        return folder

    def backup(dst: Path) -> None:  # consistent while the harness's server writes to it
        url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
        src = url.removeprefix("sqlite+aiosqlite:///")
        with (
            contextlib.closing(sqlite3.connect(src)) as a,
            contextlib.closing(sqlite3.connect(dst)) as b,
        ):
            a.backup(b)

    with (
        mock.patch.object(prefect.testing.utilities, "mkdtemp", seeded_mkdtemp),
        prefect_test_harness(server_startup_timeout=90),
    ):
        if not kept.exists():  # the harness has just migrated a new one
            kept.parent.mkdir(exist_ok=True)
            atomic_write(kept, backup, fsync=False)
        yield kept


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_uri():
    """`mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI to the environment; a test that
    calls it must not hand its (soon stopped) server to the next test's subprocesses."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
