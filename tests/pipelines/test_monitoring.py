"""Live monitoring end to end on tiny models: log, score, record, alert, retrain."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from lstm_core import scoring
from pipelines.config import load_settings
from tests.pipelines.conftest import NO_BACKTEST, price_frame

pytestmark = pytest.mark.usefixtures("prefect_harness")

REPO = Path(__file__).resolve().parents[2]


def _days(frame: pd.DataFrame) -> pd.DataFrame:
    """Yahoo-layout rows as the demo's lower-case frame."""
    out = frame.rename(columns=str.lower).drop(columns=["close"]).assign(close=frame["Close"])
    out["date"] = pd.to_datetime(out["date"])
    return out.reset_index(drop=True)


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_forecasts_are_logged_scored_once_and_recorded(trained_settings, capsys):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from pipelines import monitoring, tracking
    from pipelines.demo import let_days_arrive

    settings, project = trained_settings, trained_settings.base_dir
    log = monitoring.forecast_log(settings)
    assert len(log.read("TEST")) == 3  # the new champion forecast at the end of training
    new = _days(price_frame(125).iloc[120:])
    assert let_days_arrive(settings, "TEST", new, project / "days") == 3 + 5 * 3

    first = monitoring.scoring_flow(settings=settings)["TEST"]
    # 3 forecasts x 3 steps made on days 0..5 of the new data; targets up to day 5 arrived
    matched = first.matched
    assert int(matched["scored"].sum()) == 3 + 3 + 3 + 2 + 1
    assert first.pending == 3 + 2 + 1
    row_last = str(new["date"].iloc[-1].date())
    assert first.scored_through == row_last
    own = matched[matched["scored"]]
    assert first.since["1"].rmse == pytest.approx(
        math.sqrt(((own["forecast"] - own["actual"]) ** 2).mean())
    )

    name = settings.registry.name_for("TEST")
    run_id = first.run_id
    run = _client().get_run(run_id)
    assert run.info.run_name == "live TEST v1" and run.info.status == "FINISHED"
    history = _client().get_metric_history(run_id, "live_rmse")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    stamps = {m.step: pd.Timestamp(m.timestamp, unit="ms").date() for m in history}
    assert stamps[5] == new["date"].iloc[-1].date()
    assert "plots/live_forecasts.png" in [a.path for a in _client().list_artifacts(run_id, "plots")]
    tags = tracking.get_version(name, "1").tags
    assert float(tags["live.rmse"]) == pytest.approx(first.window["1"].rmse, rel=1e-5)
    assert {"live.skill_vs_naive", "live.coverage_80", "live.coverage_95"} <= set(tags)

    again = monitoring.scoring_flow(settings=settings)["TEST"]
    assert again.run_id == run_id and again.since["1"] == first.since["1"]
    assert len(_client().get_metric_history(run_id, "live_rmse")) == 5  # nothing counted twice
    assert len(log.read("TEST")) == 18

    from pipelines.cli import main

    config = str(project / "mlflow.yaml")
    assert main(["status", "--json", "--config", config]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["champion"] == "v1" and row["pending"] == 6 and row["scored_days"] == 5
    assert row["trained_through"] == "2020-06-16" and row["store_last_date"] == row_last
    assert row["live_rmse"] == pytest.approx(first.window["1"].rmse)
    assert set(row["coverage"]) == {"80", "95"} and row["next_retraining"]
    assert main(["status", "--config", config]) == 0
    table = capsys.readouterr().out
    assert "TEST" in table and "v1 since" in table and "(5d)" in table

    with get_client(sync_client=True) as client:
        names = {r.name for r in client.read_flow_runs(limit=200)}
        live = client.read_latest_artifacts(limit=200)
        score_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[f"score {first.scored_through}"])
            )
        )
    assert "train TEST to 2020-06-16" in names
    assert f"forecast TEST from {first.scored_through}" in names
    assert len(score_runs) >= 2
    assert {"live-test", "live-test-mlflow", "training-results"} <= {a.key for a in live}


def test_status_reads_each_tickers_stored_rows_once(trained_settings, monkeypatch):
    """A champion with logged forecasts: `status` scores them and checks the champion's
    provenance on one read of the ticker's Parquet table, not one read each."""
    from pipelines import monitoring
    from pipelines.store import PriceStore

    reads: list[str] = []
    read_table = PriceStore.read_table

    def counted(self: PriceStore, ticker: str):
        reads.append(ticker)
        return read_table(self, ticker)

    monkeypatch.setattr(PriceStore, "read_table", counted)
    (row,) = monitoring.status(trained_settings)
    assert row["champion"] == "v1" and row["pending"] == 3 and row["mismatch"] is None
    assert reads == ["TEST"]


def test_two_scorings_at_once_record_the_champion_one_after_the_other(
    trained_settings, monkeypatch, seen
):
    """Two scorings of a ticker at once (two retrainings, or one beside the scoring flow) on
    its champion's first scored day: the second waits for the first to record. Both used to
    create the new `live.*` version tags together, and under load MLflow's SQL store failed
    the later insert ("UNIQUE constraint failed: model_version_tags")."""
    from pipelines import monitoring, tracking
    from pipelines.demo import let_days_arrive

    settings = trained_settings
    day = _days(price_frame(121).iloc[120:])
    let_days_arrive(settings, "TEST", day, settings.base_dir / "days")
    waiting = seen("TEST: waiting for another scoring of TEST")
    inside: list[str] = []
    overlapped: list[bool] = []
    tag_live = tracking.tag_live

    def tagging(*args, **kwargs):
        inside.append(threading.current_thread().name)
        if len(inside) == 1:  # the first writer holds on until the other waits or writes too
            deadline = time.monotonic() + 120
            while not waiting.wait(0.05) and len(inside) == 1:
                assert time.monotonic() < deadline
        overlapped.append(len(inside) > 1)
        try:
            return tag_live(*args, **kwargs)
        finally:
            inside.remove(threading.current_thread().name)

    monkeypatch.setattr(tracking, "tag_live", tagging)
    results: dict[str, object] = {}

    def scoring(label: str) -> None:
        try:
            results[label] = monitoring.score_one(settings, "TEST", emit=False)
        except BaseException as exc:
            results[label] = exc

    threads = [threading.Thread(target=scoring, args=(s,), name=s) for s in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert waiting.is_set() and overlapped == [False, False], overlapped
    a, b = results["a"], results["b"]
    assert isinstance(a, monitoring.LiveScore) and isinstance(b, monitoring.LiveScore), results
    assert a.run_id == b.run_id  # one monitoring run of v1, not one each
    tags = tracking.get_version(settings.registry.name_for("TEST"), "1").tags
    assert tags["live.scored_through"] == str(day["date"].iloc[0].date())
    assert float(tags["live.rmse"]) == pytest.approx(a.window["1"].rmse, rel=1e-5)


def test_each_version_is_scored_on_its_own_forecasts(tiny_settings, tiny_project):
    from lstm_core.forecast import next_business_days
    from pipelines import monitoring
    from pipelines.calendar import closed_weekdays
    from pipelines.forecast_log import rows_from_forecast
    from pipelines.tasks import ingest_file

    ingest_file(tiny_settings, str(tiny_project / "prices" / "TEST.csv"), "TEST")
    prices = _days(price_frame(120))
    # dated as a model trained on these prices dates them: New York sessions (Memorial Day,
    # 25 May 2020, is none; the log's expected dates must not make it one)
    closed = closed_weekdays(tiny_settings.data.calendar, prices["date"].iloc[0])
    name = tiny_settings.registry.name_for("TEST")
    log = monitoring.forecast_log(tiny_settings)
    for i in range(100, 119):  # v1 until day 110, then v2 replaced it
        version = "1" if i < 110 else "2"
        last = prices["open"].iloc[i]
        bias = 1.0 if version == "1" else 0.1
        frame = pd.DataFrame(
            {
                "date": next_business_days(prices["date"].iloc[i], 2, closed),
                "forecast": [last + bias, last + bias],
                "lower_80": [last - 5, last - 5],
                "upper_80": [last + 5, last + 5],
            }
        )
        rows = rows_from_forecast(
            frame,
            made_on=prices["date"].iloc[i],
            model_name=name,
            version=version,
            run_id=None,
            target="open",
        )
        log.append("TEST", rows)

    got = monitoring.score(tiny_settings, "TEST", champion="2")
    logged = log.read("TEST")
    for version in ("1", "2"):
        own = scoring.match(logged[logged["version"] == version], prices, "open", dated=True)
        assert got.since[version] == scoring.metrics(own)
    assert got.since["1"].n == 10 * 2 and got.since["2"].n == 8 * 2 + 1  # made on 118: 1 due
    assert (got.pending, got.not_scored) == (1, 0)
    assert got.since["2"].rmse < got.since["1"].rmse
    assert got.window["2"].days == 9  # v2's own targets only: days 111..119


@pytest.mark.slow  # two trainings and a retraining flow (~16 s): make test-fast stays under 3 min
def test_degraded_event_on_a_level_shift_and_the_retraining_it_causes(tiny_project):
    from pipelines import monitoring, tracking
    from pipelines.demo import let_days_arrive
    from pipelines.flows import retraining_flow, training_flow

    # A model of price levels cannot follow prices that jump out of its training range.
    settings = load_settings(
        tiny_project / "mlflow.yaml",
        [
            "features.target_transform=price",
            "monitoring.min_days=3",
            "data.min_new_rows=1000",
            "registry.promotion.max_worse_than_naive=1000",  # one epoch: test the mechanics
            *NO_BACKTEST,
        ],
        env={},
    )
    training_flow(settings=settings)
    shifted = _days(price_frame(125).iloc[120:])
    for col in ("open", "high", "low", "close"):
        shifted[col] = shifted[col] * 1.7  # +70%: under the split guard's 80% rise
    let_days_arrive(settings, "TEST", shifted, tiny_project / "days")

    first = monitoring.score_ticker.fn(settings, "TEST")
    assert first.verdict.degraded and first.event
    assert any("naive RMSE" in r for r in first.verdict.reasons)
    assert not monitoring.score_ticker.fn(settings, "TEST").event  # once per scored date

    summary = retraining_flow(settings=settings, trigger="degraded")
    assert any("retrain (champion degraded: live RMSE" in n for n in summary.notes), summary.notes
    (result,) = summary.results
    tags = _client().get_run(result.run_id).data.tags
    assert tags["retrain.reason"] == "degraded" and tags["retrain.trigger"] == "degraded"
    assert "live RMSE" in tags["retrain.detail"]
    name = settings.registry.name_for("TEST")
    assert tracking.get_version(name, result.version).tags.get(tracking.TAG_PROMOTED)


@pytest.mark.slow  # trains the shipped network on the whole bundled sample
def test_no_degraded_event_on_the_bundled_sample(tmp_path):
    """The shipped configuration (made smaller: fewer units and epochs) on the sample."""
    import shutil

    from pipelines import monitoring
    from pipelines.demo import _write_yahoo, let_days_arrive
    from pipelines.flows import training_flow
    from pipelines.ingest import read_price_file

    shutil.copy(REPO / "mlflow.yaml", tmp_path / "mlflow.yaml")
    frame = read_price_file(REPO / "data" / "msft.csv", ticker="MSFT").table.to_pandas()
    head, tail = frame.iloc[:-12], frame.iloc[-12:]
    (tmp_path / "data").mkdir()
    _write_yahoo(head, tmp_path / "data" / "msft.csv")
    small = [
        "model.layers=2",
        "model.units=16",
        "training.epochs=5",
        "evaluation.backtest_folds=0",
    ]
    settings = load_settings(tmp_path / "mlflow.yaml", small, env={})
    training_flow(settings=settings, files=[str(tmp_path / "data" / "msft.csv")], ticker="MSFT")
    let_days_arrive(settings, "MSFT", tail, tmp_path / "days")
    got = monitoring.score_ticker.fn(settings, "MSFT")
    w = got.window[got.champion]
    assert w.days >= settings.monitoring.min_days
    assert not got.verdict.degraded, got.verdict.reasons
    assert not got.event


def test_the_retraining_deployment_listens_for_degraded_champions(tiny_settings, tiny_project):
    from pipelines.serve import deployments

    retrain, _ = deployments(tiny_settings, str(tiny_project / "mlflow.yaml"))
    by_event = {next(iter(t.expect)): t.parameters["trigger"] for t in retrain.triggers}
    assert by_event == {"prices.updated": "new_data", "model.degraded": "degraded"}
    assert retrain.schedules[0].parameters["trigger"] == "cron"


def test_a_scoring_runs_summary_line_per_ticker():
    from lstm_core.scoring import LiveMetrics, Verdict
    from pipelines import monitoring

    window = LiveMetrics(
        n=40, days=20, rmse=1.5, mae=1.0, naive_rmse=1.0, skill_vs_naive=-0.5,
        directional_accuracy=0.5,
    )  # fmt: skip
    degraded = monitoring.LiveScore(
        "MSFT", "2", "2017-11-10", 3, window={"2": window}, verdict=Verdict(True, ("rmse",))
    )
    assert degraded.render() == (
        "MSFT: champion v2 scored through 2017-11-10: live RMSE 1.5000 vs naive 1.0000 over "
        "20 day(s), 3 pending; DEGRADED: rmse"
    )
    fresh = monitoring.LiveScore("AAPL", "1", None, 5, not_scored=2)
    assert fresh.render() == (
        "AAPL: champion v1 has no forecast scored yet, 5 pending, 2 never scored (a day up to "
        "the target not stored)"
    )
    assert monitoring.LiveScore("IBM", None, None, 0).render() == "IBM: no champion to score"
