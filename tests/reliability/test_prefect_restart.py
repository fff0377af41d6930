"""Server faults: the Prefect server restarts while `lstm-pipeline serve` is running.

Expected: the serving process survives the outage (it keeps polling, with retries) and says
so in one line, without a traceback; after the server is back on the same port with the same
database, the retraining deployment is still there, not paused, its schedule active, and a run
started through the API is picked up by the same serving process and completes.

The project has no stored prices, so the retraining run finds nothing to train and finishes
in a second or two: the test is about the orchestration, not the model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipelines.servers import BIN, ServerProcess, child_env, prefect_api, start_prefect_server
from tests.servers.conftest import (
    RETRAIN,
    SERVERS_CONFIG,
    deployment,
    log_tail,
    wait_deployments,
)

pytestmark = pytest.mark.servers

OUTAGE_SECONDS = 5  # how long the server stays down (beyond its own shutdown)
RUN_TIMEOUT = 180
RUNNER_START = 3  # s from the runner's box to its first poll, with room for a busy machine


def _flow_run(flow_run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _start_serve(project: Path, api_url: str, extra_env: dict[str, str]) -> ServerProcess:
    env = child_env(
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_HOME": str(project / ".prefect"),
            "PREFECT_LOGGING_LEVEL": "INFO",  # the runner's own lines, for the report
            **extra_env,
        }
    )
    return ServerProcess(
        name="lstm-pipeline serve",
        args=[str(BIN / "lstm-pipeline"), "serve", "--config", str(project / "mlflow.yaml")],
        url=api_url,
        health_url=api_url + "/health",
        log_path=project / "serve.log",
        env=env,
        cwd=project,
    ).start()


def _wait_serving(serve: ServerProcess, timeout: float = 120) -> None:
    """Until Prefect's runner polls: the deployments exist as soon as they are applied, and
    an outage then (a busy server answers 503 and serve applies them again) is no outage
    of a runner. It starts right after its box of the served deployments is printed."""
    deadline = time.monotonic() + timeout
    while "Your deployments are being served" not in serve.log_path.read_text(errors="replace"):
        if not serve.alive or time.monotonic() > deadline:
            pytest.fail(f"serve never started serving\n{log_tail(serve)}")
        time.sleep(0.5)
    time.sleep(RUNNER_START)


@pytest.mark.parametrize(
    ("outage", "extra_env"),
    [
        (OUTAGE_SECONDS, {}),
        # Without client retries Prefect's runner gives up after three failed polls (~7 s);
        # a 25 s outage would end serving for good unless serve starts again by itself.
        # Giving up, the runner prints its "Failed the last 3 attempts" report, tracebacks
        # and all, unless serve gives it a printer of its own.
        (25, {"PREFECT_CLIENT_MAX_RETRIES": "0"}),
    ],
    ids=["short-outage", "outage-past-the-runners-error-threshold"],
)
def test_prefect_server_restart_while_serving(tmp_path, outage, extra_env):
    from prefect.deployments import run_deployment

    project = tmp_path / "project"
    project.mkdir()
    (project / "mlflow.yaml").write_text(SERVERS_CONFIG, encoding="utf-8")
    home = tmp_path / "prefect-home"  # the server's database lives here across the restart

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    prefect = start_prefect_server(home, timeout=180)
    port = int(prefect.url.rsplit(":", 1)[1].split("/")[0])
    timings["server_up"] = time.monotonic() - t0
    serve: ServerProcess | None = None
    try:
        with prefect_api(home, url=prefect.url):
            serve = _start_serve(project, prefect.url, extra_env)
            wait_deployments(serve, prefect)
            _wait_serving(serve)
            timings["deployments"] = time.monotonic() - t0
            before = deployment(RETRAIN)

            # The server goes away (SIGTERM to its group) and stays down for a while.
            t_down = time.monotonic()
            prefect.stop()
            time.sleep(outage)
            assert serve.alive, (
                f"serve died while the Prefect server was down (code {serve.proc.returncode})\n"
                f"{log_tail(serve)}"
            )

            # Same port, same PREFECT_HOME (hence the same database).
            prefect = start_prefect_server(home, port=port, timeout=180)
            timings["outage"] = time.monotonic() - t_down
            assert serve.alive, f"serve died during the restart\n{log_tail(serve)}"

            retrain = deployment(RETRAIN)
            assert retrain.id == before.id, "the deployment was re-created, not kept"
            assert not retrain.paused, "the restart left the deployment paused"
            assert retrain.schedules, "the deployment lost its schedule"
            assert all(s.active for s in retrain.schedules), retrain.schedules

            t_run = time.monotonic()
            flow_run = run_deployment(RETRAIN, timeout=RUN_TIMEOUT, poll_interval=1)
            flow_run = _flow_run(flow_run.id)  # read back from the server
            timings["run"] = time.monotonic() - t_run
            if flow_run.start_time is not None:  # creation -> the serving process starts it
                timings["pickup"] = (flow_run.start_time - flow_run.created).total_seconds()
            assert flow_run.state is not None and flow_run.state.is_completed(), (
                f"run after restart: {flow_run.state and flow_run.state.name} "
                f"({flow_run.state and flow_run.state.message})\n{log_tail(serve)}\n{log_tail(prefect)}"
            )
            assert serve.alive, f"serve exited after the run\n{log_tail(serve)}"
            # Nothing else could run it, but check it was this process that did (by id: a
            # retraining run renames itself once it knows what it did).
            console = serve.log_path.read_text(errors="replace")
            assert f"/runs/flow-run/{flow_run.id}" in console, log_tail(serve)
            # The outage is one line on the console and its end another, not Prefect's
            # websocket traceback nor its runner's report of failed polls; and Prefect's box
            # of the served deployments is not shown again when serving starts again.
            assert console.count("Prefect API unreachable") == 1, log_tail(serve, 8000)
            assert console.count("Prefect API is back") == 1, log_tail(serve, 8000)
            assert "Traceback" not in console, log_tail(serve, 8000)
            assert "Failed the last" not in console, log_tail(serve, 8000)
            assert console.count("Your deployments are being served") == 1, log_tail(serve)
            print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
    finally:
        if serve is not None:
            serve.stop()
        prefect.stop()
