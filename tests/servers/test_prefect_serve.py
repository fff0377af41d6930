"""`lstm-pipeline serve` against a real `prefect server`: deployments, runs, event trigger, Ctrl-C.

The tests share one served process and run in file order: the last one stops it with SIGINT.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from pipelines.servers import BIN, ServerProcess, child_env
from tests.pipelines.conftest import price_frame, write_prices
from tests.servers.conftest import (
    FORECAST,
    INITIAL_ROWS,
    MODEL_NAME,
    RETRAIN,
    TICKER,
    deployment,
    log_tail,
    wait_deployments,
)

pytestmark = pytest.mark.servers

RUN_TIMEOUT = 300


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _runs_of(deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client() as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def _task_run_names(flow_run_id) -> set[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client() as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0] for r in runs}


@pytest.fixture(scope="module")
def served(trained, server_project, mlflow_server, prefect_api):
    """`lstm-pipeline serve` in its own process group, until its deployments are registered."""
    env = child_env(
        {
            "PREFECT_API_URL": prefect_api,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "PREFECT_HOME": str(server_project / ".prefect"),
        }
    )
    proc = ServerProcess(
        name="lstm-pipeline serve",
        args=[str(BIN / "lstm-pipeline"), "serve", "--config", str(server_project / "mlflow.yaml")],
        url=prefect_api,
        health_url=prefect_api + "/health",
        log_path=server_project / "serve.log",
        env=env,
        cwd=server_project,
    ).start()
    try:
        wait_deployments(proc)
        yield proc
    finally:
        proc.stop()


def _wait_terminal(flow_run_id, timeout: float = RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        with _client() as client:
            run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {flow_run_id} still {run.state and run.state.name}")
        time.sleep(1)


def _wait_triggered(deployment_id, before: set, served, timeout: float):
    """The first run of the deployment not in ``before``, once it has ended."""
    deadline = time.monotonic() + timeout
    while not (triggered := [r for r in _runs_of(deployment_id) if r.id not in before]):
        if time.monotonic() > deadline:
            pytest.fail(f"no run triggered by the event\n{log_tail(served)}")
        time.sleep(1)
    return _wait_terminal(triggered[0].id)


def _wait_output(served, *texts: str, after: str = "", timeout: float = 30) -> str:
    """The serve process's output (stdout and stderr) once it holds `texts` after `after`.

    The runner copies a run's output to serve's as it comes: the run's last line may arrive
    a moment after the server has recorded its final state."""
    deadline = time.monotonic() + timeout
    while True:
        text = served.log_path.read_text(encoding="utf-8", errors="replace")
        tail = text[text.find(after) :] if after in text else ""
        if tail and all(t in tail for t in texts):
            return tail
        if time.monotonic() > deadline:
            pytest.fail(f"serve's output lacks {texts!r} after {after!r}\n{log_tail(served)}")
        time.sleep(0.5)


def _wait_run_logs(flow_run_id, *texts: str, timeout: float = 30) -> list[str]:
    """The flow run's log messages in the Prefect API once each of `texts` starts one (the
    run's process sends them in batches, the last as it ends)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with _client() as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        messages = [entry.message for entry in logs]
        if all(any(m.startswith(t) for m in messages) for t in texts):
            return messages
        if time.monotonic() > deadline:
            pytest.fail(f"the run's Prefect logs lack one of {texts!r}:\n" + "\n".join(messages))
        time.sleep(1)


def test_serve_registers_both_deployments(served):
    retrain = deployment(RETRAIN)
    assert not retrain.paused
    assert retrain.schedules and all(s.active for s in retrain.schedules)
    assert retrain.parameters["config_path"].endswith("mlflow.yaml")
    assert deployment(FORECAST).id


def test_run_deployment_retrains_on_new_file(served, server_project, mlflow_server):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    full = price_frame(INITIAL_ROWS + 20)
    write_prices(server_project / "data" / "incoming" / f"{TICKER}.csv", full.iloc[115:130])
    flow_run = run_deployment(RETRAIN, timeout=RUN_TIMEOUT)
    flow_run = _wait_terminal(flow_run.id)  # read back from the server
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{log_tail(served)}"
    names = _task_run_names(flow_run.id)
    assert {"ingest", "train", "register", "promote"} <= names, names
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    assert client.get_model_version(MODEL_NAME, "2").tags["data.rows"] == "130"
    # The user watching `serve` sees the run start, its progress, what it decided (the
    # summary `retrain` prints) and its final state.
    decided = f"  registered {MODEL_NAME} version 2: "
    tail = _wait_output(
        served,
        f"{TICKER}: 130 rows",
        f"{TICKER}: logging the model",
        decided,
        "Finished in state Completed()",
        after=f"started ({flow_run.id})",
    )
    assert tail.index(decided) < tail.index("Finished in state Completed()"), tail
    # The Prefect UI's Logs tab of the run holds the same lines.
    _wait_run_logs(flow_run.id, f"{TICKER}: 130 rows", f"{TICKER}: logging the model", decided)


def test_prices_updated_event_triggers_a_retraining_run(served, server_project, prefect_api):
    retrain = deployment(RETRAIN)
    before = {r.id for r in _runs_of(retrain.id)}
    new = server_project / "new" / f"{TICKER}.csv"
    write_prices(new, price_frame(INITIAL_ROWS + 20).iloc[125:140])
    out = subprocess.run(
        [
            str(BIN / "lstm-pipeline"),
            "ingest",
            str(new),
            "--ticker",
            TICKER,
            "--config",
            str(server_project / "mlflow.yaml"),
        ],
        env=child_env({"PREFECT_API_URL": prefect_api}),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "+10 new" in out.stdout, out.stdout
    run = _wait_triggered(retrain.id, before, served, 120)
    assert run.state.is_completed(), f"{run.state}\n{log_tail(served)}"
    assert "train" in _task_run_names(run.id)


def test_score_by_hand_logs_its_summary_to_its_flow_run(served, server_project, mlflow_server):
    """`score` from a shell or cron: not served, its flow run still has its lines in Prefect."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    out = subprocess.run(
        [
            str(BIN / "lstm-pipeline"),
            "score",
            "--ticker",
            TICKER,
            "--config",
            str(server_project / "mlflow.yaml"),
        ],
        env=child_env({"PREFECT_API_URL": served.url, "MLFLOW_TRACKING_URI": mlflow_server.url}),
        cwd=server_project,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    with _client() as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["scoring"])))
    assert len(runs) == 1, [r.name for r in runs]
    assert runs[0].state.is_completed(), runs[0].state
    _wait_run_logs(runs[0].id, f"{TICKER}: champion v")


def test_ctrl_c_leaves_schedules_active(served):
    served.signal(signal.SIGINT)  # what Ctrl-C in a terminal sends to the foreground group
    try:
        served.proc.wait(90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve ignored SIGINT\n{log_tail(served)}")
    retrain = deployment(RETRAIN)
    assert not retrain.paused, "Ctrl-C paused the deployment"
    assert all(s.active for s in retrain.schedules), retrain.schedules
