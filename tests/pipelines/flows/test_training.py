"""The training flow end to end under one Prefect test harness, with tiny models."""

from __future__ import annotations

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


def test_one_ticker_failure_does_not_fail_the_others(trained_settings):
    from pipelines.flows import training_flow
    from pipelines.tasks import ingest_file

    settings, project = trained_settings, trained_settings.base_dir
    short = price_frame(7, seed=3)  # too short for one window after the split
    write_prices(project / "prices" / "SHORT.csv", short)

    ingest_file(settings, str(project / "prices" / "SHORT.csv"), "SHORT")
    summary = training_flow(settings=settings, tickers=["TEST", "SHORT"])
    by = {r.ticker: r for r in summary.results}
    assert by["TEST"].error is None and by["TEST"].version == "2"
    assert by["SHORT"].error and "rows" in by["SHORT"].error


def test_folds_the_data_cannot_give_fail_before_any_mlflow_run(tiny_project):
    """A served or retraining run has no CLI check before it: the flow checks the folds."""
    from pipelines.config import load_settings
    from pipelines.errors import PipelineError
    from pipelines.flows import training_flow
    from pipelines.tasks import ingest_file

    settings = load_settings(tiny_project / "mlflow.yaml", ["evaluation.backtest_folds=19"], env={})
    ingest_file(settings, str(tiny_project / "prices" / "TEST.csv"), "TEST")
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
    [[first]] = ingest(tiny_settings, [src], None)
    [[again]] = ingest(tiny_settings, [src], None)  # unchanged file, unchanged store
    assert (first.added, again.added) == (120, 0)
    shutil.rmtree(tiny_settings.store_path)
    [[after_wipe]] = ingest(tiny_settings, [src], None)
    assert after_wipe.added == 120
    assert PriceStore(tiny_settings.store_path).manifest("TEST").rows == 120
    # two files of one ticker, merged as one: each file's report, in order
    shutil.rmtree(tiny_settings.store_path)
    older = str(write_prices(tiny_project / "older" / "TEST.csv", price_frame(100)))
    [[a], [b]] = ingest(tiny_settings, [older, src], None)
    assert (a.added, b.added, b.after.rows) == (100, 20, 120)


@pytest.mark.parametrize("refusal", ["clash", "unreadable"])
def test_a_file_refused_inside_the_flow_leaves_the_store_as_it_was(tiny_project, refusal):
    """The CLI checks a run's files before the flow, but the store can change in between
    (another `ingest`), and a served or scripted run has no CLI: the flow stores its files
    all or none. Here the second file is refused inside the flow, after a good first file
    that would add a new ticker."""
    import pandas as pd

    from pipelines.config import load_settings
    from pipelines.errors import PipelineError
    from pipelines.flows import training_flow
    from pipelines.tasks import ingest_file

    settings = load_settings(tiny_project / "mlflow.yaml", env={})
    ingest_file(settings, str(tiny_project / "prices" / "TEST.csv"), "TEST")
    store = settings.store_path
    before_bytes, before = tree_bytes(store), pd.read_parquet(store)
    good = write_prices(tiny_project / "new" / "a.csv", price_frame(120, seed=5))
    second = tiny_project / "new" / "b.csv"
    if refusal == "clash":  # the same days as the first file, other prices
        write_prices(second, price_frame(120, seed=6))
    else:
        second.write_text("Date,Open\nnot a date,1\n", encoding="utf-8")
    with pytest.raises(PipelineError) as err:
        training_flow(settings=settings, files=[str(good), str(second)], ticker="NEW")
    assert str(second) in str(err.value)
    assert tree_bytes(store) == before_bytes
    after = pd.read_parquet(store)
    pd.testing.assert_frame_equal(after, before)
    assert set(after["ticker"].astype(str)) == {"TEST"}
    assert not (store / "ticker=NEW").exists()


def test_a_server_that_stops_at_promotion_says_the_version_it_left(trained_settings, monkeypatch):
    """The tracking server stops answering after the version is registered: one
    ServerStopped line for the command, saying the version was registered and no promotion
    decided (not "nothing was registered"), and the run is not left FINISHED."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines import tracking
    from pipelines.flows import training, training_flow

    def refused(*args, **kwargs):
        # as MLflow's client raises it when the server's port refuses connections
        raise MlflowException("API request failed") from ConnectionRefusedError(111, "refused")

    monkeypatch.setattr(training.promotion, "promote", refused)
    with pytest.raises(tracking.ServerStopped) as stopped:
        training_flow(settings=trained_settings, tickers=["TEST"])
    line = str(stopped.value)
    assert "during TEST's run (connection refused)" in line, line
    assert "test-TEST version 2 was registered, no promotion decided" in line, line
    assert "nothing was registered" not in line
    tracking.connect(trained_settings)
    assert tracking.champion("test-TEST", "champion").version == "1"
    [run] = MlflowClient().search_runs(
        [tracking.connect(trained_settings)],
        "tags.kind = 'training'",
        order_by=["start_time DESC"],
        max_results=1,
    )
    assert run.info.status == "FAILED"
