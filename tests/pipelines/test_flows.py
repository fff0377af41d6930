"""Flows end to end under one Prefect test harness, with tiny models."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.pipelines.conftest import price_frame, tree_bytes, write_prices

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_training_registers_a_champion(trained_tiny):
    """Ingest, train, evaluate, log, register, promote: the session's one training flow."""
    from pipelines import tracking

    summary = trained_tiny.summary
    assert summary.ok, summary.render()
    [result] = summary.results
    assert result.ticker == "TEST" and result.version == "1"
    assert result.promoted, result.reason
    for key in ("test_rmse", "naive_rmse", "skill_vs_naive", "mase", "dm_pvalue"):
        assert key in result.metrics
    tracking.connect(trained_tiny.settings)
    assert tracking.champion("test-TEST", "champion").version == "1"
    assert "MLflow UI" in summary.render()


def test_retrain_with_a_rejected_file_exits_2_and_says_why(trained_settings, capsys):
    from pipelines.cli import main

    project = trained_settings.base_dir
    bad = price_frame(130).iloc[120:].copy()
    bad.loc[bad.index[2], "Open"] = -1.0
    write_prices(project / "data" / "incoming" / "TEST.csv", bad)
    capsys.readouterr()
    assert main(["retrain", "--config", str(project / "mlflow.yaml")]) == 2
    out, err = capsys.readouterr()
    assert "rejected TEST.csv:" in out and "line 4" in out
    assert "ERROR" not in err and "Traceback" not in err


def test_retraining_trains_only_on_new_rows_and_rejects_bad_files(trained_settings):
    from pipelines import tracking
    from pipelines.flows import retraining_flow

    settings, project = trained_settings, trained_settings.base_dir
    before = tree_bytes(settings.store_path)

    nothing = retraining_flow(settings=settings)
    assert nothing.results == []
    assert any("nothing changed" in n for n in nothing.notes)

    incoming = project / "data" / "incoming"
    full = price_frame(130)
    write_prices(incoming / "TEST.csv", full.iloc[115:])  # 10 new days, 5 overlapping
    bad = full.iloc[120:].copy()
    bad.loc[bad.index[2], "Open"] = -1.0
    write_prices(incoming / "OTHER.csv", bad)

    summary = retraining_flow(settings=settings)
    assert [r.ticker for r in summary.results] == ["TEST"]
    assert summary.results[0].version == "2"
    assert tracking.get_version("test-TEST", "2").tags[tracking.TAG_PROMOTED] in ("true", "false")
    assert tracking.get_version("test-TEST", "2").tags[tracking.TAG_REASON]
    rejected = list((project / "data" / "rejected").iterdir())
    assert any(p.name.endswith(".error.txt") for p in rejected)
    error = next(p for p in rejected if p.name.endswith(".error.txt")).read_text()
    assert "OTHER" in error and "line 4" in error
    assert [p.name.startswith("TEST") for p in (project / "data" / "archive").iterdir()]
    assert not any(incoming.iterdir())
    after = tree_bytes(settings.store_path)
    assert set(after) == set(before)  # OTHER never reached the store
    assert after != before  # TEST gained rows

    # Version 2 was trained on exactly this data, promoted or not: nothing to retrain.
    again = retraining_flow(settings=settings)
    assert again.results == []
    assert any("unchanged since v2" in n for n in again.notes)


def test_forecast_writes_future_trading_days(trained_settings):
    from pipelines.flows import forecast_flow

    result = forecast_flow(settings=trained_settings, tickers=["TEST"], days=3)
    assert result.ok, result.errors
    frame = pd.read_parquet(result.paths["TEST"])
    assert len(frame) == 3
    dates = pd.to_datetime(frame["date"])
    assert (dates.dt.dayofweek < 5).all() and dates.is_monotonic_increasing
    assert dates.iloc[0] > pd.Timestamp(price_frame(120)["Date"].iloc[-1])
    assert {"lower_95", "upper_95"} <= set(frame.columns)
    assert (frame["lower_95"] < frame["forecast"]).all()
    assert (frame["forecast"] < frame["upper_95"]).all()


def test_forecast_refusals_are_results_not_failed_task_runs(trained_settings):
    """A request the user must change comes back per ticker (the CLI prints it as one line);
    the other tickers are forecast, and a served run's results table names the refusal."""
    import json

    from prefect import get_client

    from pipelines.flows import forecast_flow

    forecasts = trained_settings.path(trained_settings.data.forecasts)
    result = forecast_flow(settings=trained_settings, tickers=["TEST", "NOPE"], days=2)
    assert list(result.frames) == ["TEST"] and not result.errors and not result.ok
    assert result.refused["NOPE"].startswith("test-NOPE has no registered version yet")
    before = tree_bytes(forecasts)
    result = forecast_flow(settings=trained_settings, tickers=["TEST"], days=4)
    assert not result.frames and not result.errors
    assert "up to 3 day(s) ahead and 4 were asked for" in result.refused["TEST"]
    assert tree_bytes(forecasts) == before
    with get_client(sync_client=True) as client:
        [latest] = [
            a for a in client.read_latest_artifacts(limit=200) if a.key == "forecast-results"
        ]
    assert json.loads(latest.data) == [
        {"ticker": "TEST", "outcome": "refused", "detail": result.refused["TEST"]}
    ]


def test_one_ticker_failure_does_not_fail_the_others(trained_settings):
    from pipelines.flows import training_flow
    from pipelines.tasks import ingest

    settings, project = trained_settings, trained_settings.base_dir
    short = price_frame(7, seed=3)  # too short for one window after the split
    write_prices(project / "prices" / "SHORT.csv", short)

    ingest.fn(settings, str(project / "prices" / "SHORT.csv"), "SHORT")
    summary = training_flow(settings=settings, tickers=["TEST", "SHORT"])
    by = {r.ticker: r for r in summary.results}
    assert by["TEST"].error is None and by["TEST"].version == "2"
    assert by["SHORT"].error and "rows" in by["SHORT"].error


@pytest.mark.slow  # the whole demo: two trainings and 20 forecast flows
def test_demo_command_trains_then_retrains_on_held_back_days(tiny_project, capsys):
    from pipelines.cli import main

    assert main(["demo", "--config", str(tiny_project / "mlflow.yaml")]) == 0
    out = capsys.readouterr().out
    assert "== 1. training flow" in out and "version 1: CHAMPION" in out
    assert "20 days ingested; forecast log: 63 rows" in out  # 3 + 20 forecasts of 3 days
    assert "live RMSE / naive (20d)" in out and "TEST last decision" in out
    assert "promoted: promoted" not in out and "refused: refused" not in out
    assert "gained 20 row(s) since v1" in out and "version 2:" in out
    assert "nothing changed" in out


def test_folds_the_data_cannot_give_fail_before_any_mlflow_run(tiny_project):
    """A served or retraining run has no CLI check before it: the flow checks the folds."""
    from pipelines.config import load_settings
    from pipelines.errors import PipelineError
    from pipelines.flows import training_flow
    from pipelines.tasks import ingest

    settings = load_settings(tiny_project / "mlflow.yaml", ["evaluation.backtest_folds=19"], env={})
    ingest.fn(settings, str(tiny_project / "prices" / "TEST.csv"), "TEST")
    with pytest.raises(PipelineError) as err:
        training_flow(settings=settings, tickers=["TEST"])
    assert str(err.value) == (
        "cannot backtest TEST on its 120 stored rows: test part has 18 rows, fewer than 19 "
        "backtest folds: lower evaluation.backtest_folds (0 turns the backtest off) or raise "
        "evaluation.test_fraction"
    )
    assert not (tiny_project / "mlflow.db").exists()  # no experiment, no run
    assert not (tiny_project / "mlartifacts").exists()


def test_ingest_cache_never_hides_a_wiped_store(tiny_settings, tiny_project):
    import shutil

    from pipelines.store import PriceStore
    from pipelines.tasks import ingest_cached as ingest

    src = str(tiny_project / "prices" / "TEST.csv")
    [first] = ingest(tiny_settings, src, None)
    [again] = ingest(tiny_settings, src, None)  # unchanged file, unchanged store
    assert (first.added, again.added) == (120, 0)
    shutil.rmtree(tiny_settings.store_path)
    [after_wipe] = ingest(tiny_settings, src, None)
    assert after_wipe.added == 120
    assert PriceStore(tiny_settings.store_path).manifest("TEST").rows == 120
