"""Training logs and registers over HTTP to a real `mlflow server`; a fresh client reads it."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from pipelines.servers import child_env
from tests.isolated import isolated_command
from tests.servers.conftest import MODEL_NAME, TICKER

pytestmark = pytest.mark.servers


def test_training_flow_logs_and_registers_over_http(trained, mlflow_server):
    from mlflow import MlflowClient

    settings, summary = trained
    [result] = summary.results
    assert result.ticker == TICKER and result.promoted, result.reason
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ticker"] == TICKER
    assert "test_rmse" in run.data.metrics
    assert client.get_metric_history(result.run_id, "train_loss"), "no per-epoch metrics"
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.version == result.version and champion.run_id == result.run_id
    # Artifacts went to the server's artifact root (clients write there directly).
    root = mlflow_server.log_path.parent / "artifacts"
    assert any(p.name == "test_predictions.png" for p in root.rglob("*.png")), list(root.rglob("*"))


SECOND_CLIENT = textwrap.dedent(
    """
    import json, sys
    import mlflow, pandas as pd
    from mlflow import MlflowClient

    run_id, name, csv = sys.argv[1:4]
    run = MlflowClient().get_run(run_id)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    columns = model.metadata.get_input_schema().input_names()
    frame = pd.read_csv(csv)  # every stored column, dates as ISO strings
    out = model.predict(frame)
    print(json.dumps({
        "status": run.info.status,
        "test_rmse": run.data.metrics["test_rmse"],
        "columns": columns,
        "rows": len(out),
        "values": pd.DataFrame(out).select_dtypes("number").to_numpy().ravel().tolist(),
    }))
    """
)


def test_fresh_client_reads_run_and_loads_champion_over_http(trained, mlflow_server, tmp_path):
    from pipelines.store import PriceStore

    settings, summary = trained
    [result] = summary.results
    recent = PriceStore(settings.store_path).load(TICKER).tail(30)
    csv = tmp_path / "recent.csv"
    recent.to_csv(csv, index=False)
    proc = subprocess.run(
        isolated_command(SECOND_CLIENT, result.run_id, MODEL_NAME, str(csv)),
        env=child_env({"MLFLOW_TRACKING_URI": mlflow_server.url}, drop=("PREFECT_API_URL",)),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # nothing local to fall back on
    )
    assert proc.returncode == 0, f"second client failed:\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "FINISHED"
    assert out["test_rmse"] == pytest.approx(result.metrics["test_rmse"])
    assert out["columns"] == ["date", *settings.features.columns]  # not every stored column
    assert out["rows"] >= 1 and out["values"]
    assert all(v == v and v > 0 for v in out["values"])  # finite, positive prices
