"""The forecast flow under one Prefect test harness, with tiny models."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.pipelines.conftest import price_frame, tree_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_forecast_writes_future_trading_days(trained_settings):
    from pipelines.flows import forecast_flow

    result = forecast_flow(settings=trained_settings, tickers=["TEST"], days=3)
    assert result.ok, result.errors
    frame = pd.read_parquet(result.paths["TEST"])
    assert len(frame) == 3
    dates = pd.to_datetime(frame["expected_date"])
    assert (dates.dt.dayofweek < 5).all() and dates.is_monotonic_increasing
    assert dates.iloc[0] > pd.Timestamp(price_frame(120)["Date"].iloc[-1])
    assert {"lower_95", "upper_95"} <= set(frame.columns)
    assert (frame["lower_95"] < frame["forecast"]).all()
    assert (frame["forecast"] < frame["upper_95"]).all()


def test_forecast_refusals_are_results_not_failed_task_runs(trained_settings, monkeypatch):
    """A request the user must change comes back per ticker (the CLI prints it as one line);
    the other tickers are forecast, and a served run's results table names the refusal. A
    served run ends with what the CLI prints, in its log lines (the serve console's, the
    Prefect run's)."""
    import json
    import logging

    from prefect import get_client

    from pipelines.flows import common, forecast_flow

    forecasts = trained_settings.path(trained_settings.data.forecasts)
    monkeypatch.setattr(common, "_served", lambda: True)
    lines: list[str] = []
    catch = logging.Handler()
    catch.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("pipelines")
    level = logger.level
    logger.addHandler(catch)
    logger.setLevel(logging.INFO)
    try:
        result = forecast_flow(settings=trained_settings, tickers=["TEST", "NOPE"], days=2)
    finally:
        logger.removeHandler(catch)
        logger.setLevel(level)
    monkeypatch.undo()
    assert list(result.frames) == ["TEST"] and not result.errors and not result.ok
    assert result.refused["NOPE"].startswith("test-NOPE has no registered version yet")
    assert f"TEST: forecast written to {result.paths['TEST']}" in "\n".join(lines)
    assert f"NOPE: {result.refused['NOPE']}" in lines
    before = tree_bytes(forecasts)
    result = forecast_flow(settings=trained_settings, tickers=["TEST"], days=4)
    assert not result.frames and not result.errors
    assert (
        "days 4 is out of range: this model forecasts up to 3 day(s) ahead"
        in result.refused["TEST"]
    )
    assert tree_bytes(forecasts) == before
    with get_client(sync_client=True) as client:
        [latest] = [
            a for a in client.read_latest_artifacts(limit=200) if a.key == "forecast-results"
        ]
    assert json.loads(latest.data) == [
        {"ticker": "TEST", "outcome": "refused", "detail": result.refused["TEST"]}
    ]


def test_the_latest_forecast_has_the_logs_columns_and_concatenates_with_it(trained_settings):
    """`data/forecasts/<T>.parquet` names things as the log does (`expected_date`, `version`,
    ...), so a reader stacks the two and finds the latest forecast's rows in the log."""
    from pipelines.flows import forecast_flow
    from pipelines.forecast_log import KEY

    result = forecast_flow(settings=trained_settings, tickers=["TEST"], days=3)
    assert result.ok, result.errors
    forecasts = trained_settings.path(trained_settings.data.forecasts)
    latest = pd.read_parquet(forecasts / "TEST.parquet")
    log = pd.read_parquet(forecasts / "log")  # hive: `ticker` from the folder names
    assert list(latest.columns) == list(log.columns)
    assert "date" not in latest.columns and "model_version" not in latest.columns
    assert latest["version"].tolist() == ["1"] * 3 and latest["step"].tolist() == [1, 2, 3]
    both = pd.concat([log, latest], ignore_index=True)
    assert len(both.drop_duplicates(["ticker", *KEY])) == len(log)
    assert "expected_date" in result.render() and "test-TEST v1, made on" in result.render()


def test_forecast_runs_are_tagged_so_the_runs_table_can_leave_them_out(trained_settings):
    """Each forecast is an MLflow run of kind `forecast` and each training one of kind
    `training`: the README's filters (`tags.kind != 'forecast'`) show the training alone."""
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.flows import forecast_flow

    experiment = tracking.connect(trained_settings)

    def names(where: str) -> list[str]:
        return sorted(r.info.run_name for r in MlflowClient().search_runs([experiment], where))

    before = len(names("tags.kind = 'forecast'"))  # the new champion's first forecast
    for _ in range(2):
        assert forecast_flow(settings=trained_settings, tickers=["TEST"], days=1).ok
    assert names("tags.kind = 'forecast'") == ["forecast TEST v1"] * (before + 2)
    [training] = names("tags.kind != 'forecast'")
    assert training.startswith("TEST to ")
    assert names("tags.kind = 'training'") == [training]
