"""What a training run logs: flat params, metrics and epoch curves, figures, the dataset
input and lineage tags; a dataset insert that races another run's."""

from __future__ import annotations

import subprocess

import pytest

from tests.pipelines.conftest import price_frame

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_run_logs_flat_params_metrics_and_epoch_curves(trained, client):
    settings, result = trained
    run = client.get_run(result.run_id)
    params = run.data.params
    assert params["features.lookback"] == "5"
    assert params["model.units"] == "4"
    assert params["registry.model_name"] == "test-{ticker}"
    assert set(params) == set(settings.flat())  # every configuration value, flat
    metrics = run.data.metrics
    for key in (
        "test_rmse",
        "naive_rmse",
        "skill_vs_naive",
        "mase",
        "dm_stat",
        "dm_pvalue",
        "interval_coverage_80",
        "interval_coverage_95",
        "interval_width_80",
        "interval_score_95",
        "naive_interval_coverage_80",
        "naive_interval_width_95",
        "interval_q_80_day3",
        "test_directional_accuracy",
    ):
        assert key in metrics, key
    assert metrics["skill_vs_naive"] == pytest.approx(
        1 - metrics["test_rmse"] / metrics["naive_rmse"]
    )
    history = client.get_metric_history(result.run_id, "train_loss")
    assert [m.step for m in history] == list(range(settings.training.epochs))
    assert client.get_metric_history(result.run_id, "val_loss")
    assert run.info.status == "FINISHED"
    assert "TEST" in run.info.run_name


def test_run_logs_figures_dataset_and_lineage_tags(trained, client):
    _, result = trained
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/test_predictions.png", "plots/loss.png"} <= plots
    run = client.get_run(result.run_id)
    [ds] = run.inputs.dataset_inputs
    assert ds.dataset.digest and "TEST" in ds.dataset.name
    assert "ticker=TEST" in ds.dataset.source
    tags = run.data.tags
    assert tags["ticker"] == "TEST"
    assert tags["data.last_date"] == str(price_frame(120)["Date"].iloc[-1])
    assert tags["data.rows"] == "120"
    assert "lib.tensorflow" in tags and "lib.mlflow" in tags


def test_run_records_the_packages_own_version(trained):
    """Installed from a wheel there is no checkout to ask for a commit: the distribution's
    version says which code trained the run."""
    from importlib.metadata import version

    from mlflow import MlflowClient

    from pipelines.config import resolve_tracking_uri

    settings, result = trained
    tags = MlflowClient(resolve_tracking_uri(settings)).get_run(result.run_id).data.tags
    assert tags["lib.lstm-stock-pipeline"] == version("lstm-stock-pipeline")


def test_run_records_the_checkouts_git_commit(trained, client):
    """start_run tags the commit of the checkout holding pipelines/ and lstm_core/."""
    from pipelines import tracking

    _, result = trained
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=tracking.CORE_PACKAGE.parent,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    tags = client.get_run(result.run_id).data.tags
    assert tags.get("mlflow.source.git.commit") == (head or None)


@pytest.fixture
def dataset_run(tmp_path):
    """A run in a fresh SQLite store, and a one-row frame to log as its dataset."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("race", artifact_location=str(tmp_path / "artifacts"))
    run_id = MlflowClient().create_run(exp).info.run_id
    yield run_id, pd.DataFrame({"date": ["2020-01-01"], "close": [1.0]})
    mlflow.set_tracking_uri(previous)


def test_dataset_logged_by_a_racing_run_is_reused_after_a_duplicate_key(dataset_run, monkeypatch):
    """Two runs inserting the same new dataset at once: the loser retries and reuses it."""
    import sqlalchemy.exc
    from mlflow import MlflowClient

    from pipelines import tracking

    run_id, frame = dataset_run
    real, calls = MlflowClient.log_inputs, []

    def racing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError(
                "INSERT INTO datasets", {}, Exception("UNIQUE constraint failed: datasets.name")
            )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_inputs", racing)
    tracking.log_dataset(run_id, frame, source="/data/x", digest="d" * 40, name="X")
    assert len(calls) == 2
    inputs = MlflowClient().get_run(run_id).inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == ["X"]


def test_other_dataset_errors_are_not_retried(dataset_run, monkeypatch):
    from mlflow import MlflowClient

    from pipelines import tracking

    run_id, frame = dataset_run
    calls = []

    def broken(self, *args, **kwargs):
        calls.append(1)
        raise RuntimeError("disk full")

    monkeypatch.setattr(MlflowClient, "log_inputs", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        tracking.log_dataset(run_id, frame, source="/data/x", digest="d" * 40, name="X")
    assert len(calls) == 1
