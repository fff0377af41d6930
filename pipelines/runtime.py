"""Process environment for the embedded defaults, set before Prefect or TensorFlow load."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.config import Settings

# Quiet, offline-friendly defaults the user can still override from the environment.
_DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # A fresh ephemeral database needs more than Prefect's default 20 s on two cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    # Fail fast on a dead tracking server: Prefect's task retries add the back-off on top,
    # MLflow's own defaults (7 retries, up to 120 s each) would hang a run for many minutes.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "GIT_PYTHON_REFRESH": "quiet",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}


def configure_environment(settings: Settings) -> None:
    """Keep Prefect's home inside the project and apply the quiet defaults."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(Path(settings.base_dir) / ".prefect"))
    if settings.runtime.prefect_api_url:
        os.environ["PREFECT_API_URL"] = settings.runtime.prefect_api_url
