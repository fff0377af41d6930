"""The training flow end to end under one Prefect test harness, with tiny models."""

from __future__ import annotations

import pytest

from tests.pipelines.conftest import price_frame, write_prices

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
    from pipelines.tasks import ingest

    settings, project = trained_settings, trained_settings.base_dir
    short = price_frame(7, seed=3)  # too short for one window after the split
    write_prices(project / "prices" / "SHORT.csv", short)

    ingest.fn(settings, str(project / "prices" / "SHORT.csv"), "SHORT")
    summary = training_flow(settings=settings, tickers=["TEST", "SHORT"])
    by = {r.ticker: r for r in summary.results}
    assert by["TEST"].error is None and by["TEST"].version == "2"
    assert by["SHORT"].error and "rows" in by["SHORT"].error


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
