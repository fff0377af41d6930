"""The multi-ticker training flow fanned out on a local Dask cluster of worker processes.

Each ticker branch (`train-ticker`, which calls the other tasks inside it) runs in a Dask
worker against the real Prefect server, and logs to its own MLflow run on the tracking server.
"""

from __future__ import annotations

import subprocess

import pytest

from pipelines.servers import BIN, child_env
from tests.pipelines.conftest import price_frame, write_prices
from tests.servers.conftest import SERVERS_CONFIG

pytestmark = pytest.mark.servers

TICKERS = ["AAA", "BBB"]


def test_dask_fan_out_one_run_per_ticker(tmp_path, mlflow_server, prefect_api):
    from mlflow import MlflowClient
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect_dask import DaskTaskRunner

    from pipelines.config import load_settings
    from pipelines.flows import fan_out, training_flow
    from pipelines.tasks import ingest_file

    (tmp_path / "mlflow.yaml").write_text(SERVERS_CONFIG, encoding="utf-8")
    settings = load_settings(
        tmp_path / "mlflow.yaml",
        [
            f"tracking.uri={mlflow_server.url}",
            "tracking.experiment=fanout",
            "runtime.task_runner=dask",
            "runtime.dask_workers=2",
        ],
        env={},
    )
    for seed, ticker in enumerate(TICKERS, start=1):
        csv = write_prices(tmp_path / "prices" / f"{ticker}.csv", price_frame(120, seed=seed))
        ingest_file(settings, str(csv), ticker)

    with fan_out(settings, training_flow) as flow_obj:
        assert isinstance(flow_obj.task_runner, DaskTaskRunner)
        state = flow_obj(settings=settings, tickers=TICKERS, return_state=True)
    summary = state.result(raise_on_failure=True)
    assert summary.ok, summary.render()
    by = {r.ticker: r for r in summary.results}
    assert set(by) == set(TICKERS)
    assert len({r.run_id for r in by.values()}) == len(TICKERS)

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    for ticker, result in by.items():
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["ticker"] == ticker  # each branch logged to its own run
        assert "test_rmse" in run.data.metrics
        assert run.data.params["runtime.task_runner"] == "dask"
        assert client.get_model_version(f"test-{ticker}", result.version).run_id == result.run_id

    # The branches and their inner tasks were recorded by the real Prefect server.
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    names = [r.name.rsplit("-", 1)[0] for r in task_runs]
    assert names.count("train-ticker") == len(TICKERS), names
    assert names.count("train") == len(TICKERS), names
    assert all(r.state.is_completed() for r in task_runs), [(r.name, r.state) for r in task_runs]


@pytest.mark.slow
def test_dask_fan_out_shows_each_tickers_progress_on_the_console(
    tmp_path, mlflow_server, prefect_api
):
    """`run` with the Dask runner, as a user runs it: the workers' progress lines reach the
    command's stderr as the thread runner's do, and closing the cluster prints no
    `distributed.nanny` warning."""
    (tmp_path / "mlflow.yaml").write_text(SERVERS_CONFIG, encoding="utf-8")
    files = [
        str(write_prices(tmp_path / "prices" / f"{t}.csv", price_frame(120, seed=seed)))
        for seed, t in enumerate(TICKERS, start=1)
    ]
    out = subprocess.run(
        [str(BIN / "lstm-pipeline"), "run", *files]
        + [
            f"--set=tracking.uri={mlflow_server.url}",
            "--set=tracking.experiment=fanout-console",
            "--set=evaluation.backtest_folds=0",
            "--set=runtime.task_runner=dask",
            "--set=runtime.dask_workers=2",
        ],
        cwd=tmp_path,
        env=child_env({"PREFECT_API_URL": prefect_api}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    for ticker in TICKERS:
        for line in (
            f"{ticker}: 120 rows",
            f"{ticker} epoch 1/1",
            f"{ticker}: evaluating on",
            f"{ticker}: logging the model",
        ):
            assert line in out.stderr, f"{line!r} missing from stderr:\n{out.stderr}"
    assert "distributed.nanny" not in out.stderr, out.stderr
