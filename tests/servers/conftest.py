"""Real servers on 127.0.0.1 for the end-to-end tests, shared by the tests of this package.

One `mlflow server` (SQLite + local artifact root), one `prefect server`, and one tiny
project trained once against both. Every process is stopped when the package's tests end,
also on failure (each server runs in its own process group; `ServerProcess.stop` kills the
group). Package scope: the process-wide switches (PREFECT_API_URL, MLflow's tracking URI)
are undone before any later test folder runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipelines.servers import (
    POSTGRES_HOWTO,
    PostgresCluster,
    ServerProcess,
    postgres_bin,
    start_mlflow_server,
    start_postgres,
    start_prefect_server,
)
from tests.pipelines.conftest import TINY_CONFIG, price_frame, write_prices

TICKER = "TEST"
MODEL_NAME = f"test-{TICKER}"
INITIAL_ROWS = 120

# The tiny project, with a cron that cannot fire while the suite runs on a weekday.
SERVERS_CONFIG = TINY_CONFIG + 'schedule:\n  cron: "0 0 1 1 *"\n  timezone: UTC\n'


RETRAIN = "retraining/scheduled-retraining"
FORECAST = "forecast/batch-forecast"


def deployment(name: str):
    """A deployment read by name from the Prefect API this process points at."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def log_tail(proc: ServerProcess, chars: int = 4000) -> str:
    try:
        return f"--- {proc.log_path}:\n{proc.log_path.read_text(errors='replace')[-chars:]}"
    except OSError:
        return f"--- {proc.log_path}: (no log)"


def wait_deployments(serve: ServerProcess, *others: ServerProcess, timeout: float = 180) -> None:
    """Until `lstm-pipeline serve` has registered both deployments (fails if it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        if not serve.alive:
            pytest.fail(f"serve exited early (code {serve.proc.returncode})\n{log_tail(serve)}")
        try:
            deployment(RETRAIN), deployment(FORECAST)
            return
        except Exception:
            if time.monotonic() > deadline:
                tails = "\n".join(log_tail(p) for p in (serve, *others))
                pytest.fail(f"deployments not registered\n{tails}")
            time.sleep(1)


@pytest.fixture(scope="package")
def _servers(tmp_path_factory) -> dict[str, ServerProcess]:
    """Both servers start at once (each takes 5-20 s to answer); both stop at the end."""
    started: dict[str, ServerProcess] = {}
    try:
        started["mlflow"] = start_mlflow_server(
            tmp_path_factory.mktemp("mlflow-server"), wait=False
        )
        started["prefect"] = start_prefect_server(
            tmp_path_factory.mktemp("prefect-server"), wait=False
        )
        for server in started.values():
            server.wait_healthy(timeout=180)
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="package")
def mlflow_server(_servers) -> ServerProcess:
    return _servers["mlflow"]


@pytest.fixture(scope="package")
def prefect_server(_servers) -> ServerProcess:
    return _servers["prefect"]


@pytest.fixture(scope="package")
def prefect_api(prefect_server):
    """This process talks to the real Prefect server (not an ephemeral API) while in use."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = prefect_server.url
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server.url}):
            yield prefect_server.url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="package")
def server_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("server-project")
    (root / "mlflow.yaml").write_text(SERVERS_CONFIG, encoding="utf-8")
    write_prices(root / "prices" / f"{TICKER}.csv", price_frame(INITIAL_ROWS))
    return root


@pytest.fixture(scope="package")
def trained(server_project, mlflow_server, prefect_api):
    """The tiny project trained once by the training flow, over HTTP to the MLflow server."""
    import mlflow

    from pipelines.config import load_settings
    from pipelines.flows import training_flow

    settings = load_settings(
        server_project / "mlflow.yaml", [f"tracking.uri={mlflow_server.url}"], env={}
    )
    try:
        summary = training_flow(settings=settings)
        assert summary.ok, summary.render()
        yield settings, summary
    finally:
        # Later tests in this process must not inherit the server's URI.
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="session")
def postgres() -> PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with the databases `mlflow` and `prefect`
    (each owned by a role of that name); stopped and deleted at the end, also on failure."""
    if postgres_bin() is None:
        pytest.skip(POSTGRES_HOWTO)
    cluster = start_postgres(databases=("mlflow", "prefect"), durable=False)
    try:
        yield cluster
    finally:
        cluster.stop()
