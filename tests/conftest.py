"""Shared test set-up: quiet, offline, everything under a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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
def prefect_db() -> Path:
    """A Prefect database already migrated to this Prefect version, made once and kept between
    sessions: a server started on a copy skips the migrations, most of a start on a new one."""
    import filelock
    import prefect

    folder = Path(tempfile.gettempdir()) / "lstm-pipeline-tests"
    folder.mkdir(exist_ok=True)
    db = folder / f"prefect-{prefect.__version__}.db"
    with filelock.FileLock(f"{db}.lock"):  # the test workers share it
        if not db.exists():
            part = db.with_suffix(".part")
            part.unlink(missing_ok=True)
            env = {
                **os.environ,
                "PREFECT_HOME": str(folder / "prefect-home"),
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{part}",
            }
            prefect_cli = Path(sys.executable).with_name("prefect")
            subprocess.run(
                [str(prefect_cli), "server", "database", "upgrade", "-y"],
                env=env,
                check=True,
                capture_output=True,
            )
            os.replace(part, db)
    return db


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory, prefect_db):
    """One Prefect test API for the whole session, on a copy of `prefect_db`."""
    from unittest import mock

    import prefect.testing.utilities
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))

    def seeded_mkdtemp() -> str:  # the harness's database folder, with the database in it
        folder = tempfile.mkdtemp()
        shutil.copyfile(prefect_db, Path(folder) / "prefect-test.db")
        return folder

    with (
        mock.patch.object(prefect.testing.utilities, "mkdtemp", seeded_mkdtemp),
        prefect_test_harness(server_startup_timeout=90),
    ):
        yield


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
