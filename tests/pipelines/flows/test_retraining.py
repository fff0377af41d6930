"""The retraining flow (and the demo that chains training and retraining), tiny models."""

from __future__ import annotations

import threading
import time

import pytest

from tests.pipelines.conftest import (
    NO_BACKTEST,
    copy_of,
    price_frame,
    tree_bytes,
    write_prices,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


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


def test_retrain_rejects_a_file_whose_close_jumps_against_the_stored_one(trained_settings, capsys):
    from pipelines.cli import main

    project = trained_settings.base_dir
    before = tree_bytes(trained_settings.store_path)
    split = price_frame(121).iloc[[120]].copy()  # the day after the stored ones, a 1:2 split
    split[["Open", "High", "Low", "Close"]] = round(
        float(price_frame(120)["Close"].iloc[-1]) * 2, 4
    )
    write_prices(project / "data" / "incoming" / "TEST.csv", split)
    capsys.readouterr()
    assert main(["retrain", "--config", str(project / "mlflow.yaml")]) == 2
    out, err = capsys.readouterr()
    assert "rejected TEST.csv:" in out and "stored for TEST" in out
    assert "ERROR" not in err and "Traceback" not in err
    folder = project / "data" / "rejected"
    rejected = sorted(p.name for p in folder.iterdir())
    assert len(rejected) == 2 and rejected[1] == rejected[0] + ".error.txt"
    # The error names the rejected copy beside it (the incoming path is gone) and its origin.
    error = (folder / rejected[1]).read_text(encoding="utf-8").splitlines()
    assert error[0].startswith(f"{folder / rejected[0]}, line 2, column 'Close': "), error
    assert error[1:] == [
        f"(moved here by retrain from {project / 'data' / 'incoming' / 'TEST.csv'})"
    ]
    assert tree_bytes(trained_settings.store_path) == before
    assert "TEST: skip" in out  # nothing new was stored: no training on the bad row


def test_retrain_skips_a_ticker_too_short_to_train_until_enough_rows_arrive(
    trained_settings, capsys
):
    """A file named after no ticker stores a new one (its name) with a few rows: retrain, a cron
    job, notes why it waits and exits 0, every time, and trains nothing; more rows make it due."""
    from pipelines.cli import main
    from pipelines.flows.retraining import needs_training

    project = trained_settings.base_dir
    cfg = str(project / "mlflow.yaml")
    full = price_frame(130)
    write_prices(project / "data" / "incoming" / "msft_tail.csv", full.iloc[120:])  # 10 rows
    capsys.readouterr()
    for _ in range(2):  # the second time with nothing new
        assert main(["retrain", "--config", cfg]) == 0
        out, err = capsys.readouterr()
        lines = out.splitlines()
        skip = [line for line in lines if line.startswith("msft_tail: ")]
        assert len(skip) == 1, out
        assert skip[0].startswith("msft_tail: skip (10 rows, too few to train: "), out
        assert "training part has" in skip[0], out
        assert "nothing changed: no ticker to retrain" in lines, out
        assert "FAILED" not in out and "ERROR" not in err and "Traceback" not in err
    from pipelines import tracking

    tracking.connect(trained_settings)
    assert not tracking.registered_model_exists("test-msft_tail")  # no run, no version
    write_prices(project / "more" / "msft_tail.csv", full.iloc[:120])
    assert main(["ingest", str(project / "more" / "msft_tail.csv"), "--config", cfg]) == 0
    assert needs_training(trained_settings, "msft_tail") == (True, "no model yet")


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


@pytest.mark.slow  # the whole demo: two trainings and 20 forecast flows
def test_demo_command_trains_then_retrains_on_held_back_days(tiny_project, capsys):
    from pipelines.cli import main

    cfg = ["--config", str(tiny_project / "mlflow.yaml")]
    # the project's other tickers and its incoming files are not the demo's to retrain or take
    assert (
        main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--ticker", "OTHER", *cfg]) == 0
    )
    later = write_prices(tiny_project / "data" / "incoming" / "LATER.csv", price_frame(130))
    assert main(["demo", *cfg]) == 0
    out = capsys.readouterr().out
    assert "OTHER: retrain" not in out and "OTHER: skip" not in out, out
    assert later.exists()
    assert "== 1. training flow" in out and "version 1: CHAMPION" in out
    assert "20 days ingested; forecast log: 63 rows" in out  # 3 + 20 forecasts of 3 days
    assert "live RMSE / naive (20d)" in out and "TEST last decision" in out
    assert "promoted: promoted" not in out and "refused: refused" not in out
    assert "gained 20 row(s) since v1" in out and "version 2:" in out
    assert "nothing changed" in out


def test_a_retraining_of_chosen_tickers_leaves_the_others_alone(trained_settings):
    """`tickers`: only those stored tickers are scored and considered (the demo's own)."""
    from pipelines.cli import main
    from pipelines.flows import retraining_flow

    cfg = ["--config", str(trained_settings.base_dir / "mlflow.yaml")]
    src = str(trained_settings.base_dir / "prices" / "TEST.csv")
    assert main(["ingest", src, "--ticker", "OTHER", *cfg]) == 0  # stored, never trained
    summary = retraining_flow(settings=trained_settings, tickers=["TEST"])
    assert summary.results == []
    assert not any("OTHER" in n for n in summary.notes), summary.notes
    assert any(n.startswith("TEST: skip (unchanged since v1") for n in summary.notes), summary.notes


@pytest.mark.slow  # a training: CI runs it
def test_a_changed_calendar_is_a_change_that_retrains(trained_settings):
    """The project's data.calendar changed since its latest version was trained: that
    version's forecasts fall on the other calendar's sessions (`forecast` refuses them), so
    the same rows are trained again, once."""
    from pipelines.flows import retraining_flow

    data = trained_settings.data.model_copy(update={"calendar": None})
    settings = trained_settings.model_copy(update={"data": data})
    summary = retraining_flow(settings=settings)
    assert [r.ticker for r in summary.results] == ["TEST"], summary.notes
    assert summary.results[0].version == "2"
    assert "TEST: retrain (v1 was trained with data.calendar XNYS, this project's is null)" in (
        summary.notes
    )
    again = retraining_flow(settings=settings)
    assert again.results == [] and any("unchanged since v2" in n for n in again.notes), again.notes


def test_a_replaced_stored_day_is_a_change_that_retrains(trained_settings, capsys):
    """`retrain --set data.replace=true` with a corrected stored day: the champion's training
    data is no longer what the store holds, so the ticker retrains, saying why; after that,
    nothing has changed."""
    from pipelines.cli import main

    project = trained_settings.base_dir
    cfg = ["--config", str(project / "mlflow.yaml"), "--set", "evaluation.backtest_folds=0"]
    last = price_frame(120).iloc[[-1]].copy()
    last["Open"] = round(float(last["Open"].iloc[0]) + 0.01, 4)
    write_prices(project / "data" / "incoming" / "TEST.csv", last)
    day = last["Date"].iloc[0]
    capsys.readouterr()
    assert main(["retrain", *cfg, "--set", "data.replace=true"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ingested TEST.csv: TEST +0 new, 1 replaced, 0 unchanged rows")
    assert lines[1] == (
        f"TEST: retrain (stored days through {day} changed since v1 was trained on them "
        "(gained 0 row(s)))"
    )
    assert "nothing changed: no ticker to retrain" not in lines
    # v1 no longer matches the stored days, but it is this project's own (its lstm.project
    # tag): v2 is compared with it on scores
    [line] = [x for x in lines if x.startswith("  registered test-TEST version 2: ")]
    assert "test_rmse" in line and "champion's" in line and "v1 " not in line, line
    assert main(["retrain", *cfg]) == 0
    assert "TEST: skip (unchanged since v2 was trained)" in capsys.readouterr().out.splitlines()


def test_one_retrain_decision_reads_the_tickers_store_file_once(
    trained_settings, capsys, monkeypatch
):
    """A stored day replaced and no new rows: the decision checks the days the champion was
    trained on and whether the rows can be trained, takes it again under the ticker's
    retraining lock, then the training loads them. All of it uses one read of the ticker's
    Parquet file."""
    from pipelines import tasks
    from pipelines.cli import main
    from pipelines.flows import retraining
    from pipelines.store import PriceStore

    reads: list[str] = []
    read_table = PriceStore.read_table

    def counted(self, ticker):
        reads.append(ticker)
        return read_table(self, ticker)

    decide = retraining.needs_training

    decisions: list[str] = []

    def deciding(*args, **kwargs):
        if not decisions:  # the ingest and the live scoring before it read the store too
            reads.clear()
        decisions.append(args[1])
        return decide(*args, **kwargs)

    loaded: list[list[str]] = []

    def stop(frame, settings):  # the training has its rows: no need to fit a model
        loaded.append(list(reads))
        raise RuntimeError("stopped once the rows were loaded")

    monkeypatch.setattr(PriceStore, "read_table", counted)
    monkeypatch.setattr(retraining, "needs_training", deciding)
    monkeypatch.setattr(tasks, "split", stop)
    project = trained_settings.base_dir
    last = price_frame(120).iloc[[-1]].copy()
    last["Open"] = round(float(last["Open"].iloc[0]) + 0.01, 4)
    write_prices(project / "data" / "incoming" / "TEST.csv", last)
    capsys.readouterr()
    cfg = ["--config", str(project / "mlflow.yaml"), "--set", "data.replace=true"]
    assert main(["retrain", *cfg]) == 1
    out = capsys.readouterr().out
    assert "TEST: retrain (stored days through " in out, out
    assert "TEST: FAILED: RuntimeError: stopped once the rows were loaded" in out, out
    assert decisions == ["TEST", "TEST"]  # the flow's, then the re-check under the lock
    assert loaded == [["TEST"]]


def test_a_second_retraining_waits_for_the_first_to_take_the_incoming_file(
    trained_tiny, tmp_path, monkeypatch, seen
):
    """Two retrainings at once with a file in the incoming folder (a cron `retrain` overlapping
    a manual one): the second starts while the first ingests the file, waits for it, then
    finds the folder empty. The file is ingested and archived once, and neither fails (the
    second used to ingest it too and die moving a file already gone)."""
    from pipelines import tasks
    from pipelines.flows import retraining_flow
    from pipelines.store import PriceStore

    overrides = [*NO_BACKTEST, "data.min_new_rows=50"]  # one new row: nothing to train
    with copy_of(trained_tiny, tmp_path / "project", overrides) as settings:
        project = settings.base_dir
        write_prices(project / "data" / "incoming" / "TEST.csv", price_frame(121).iloc[[120]])
        waiting = seen("waiting for another retraining to finish with")
        second: dict = {}

        def run_second() -> None:
            try:
                second["summary"] = retraining_flow(settings=settings)
            except BaseException as exc:
                second["error"] = exc

        thread = threading.Thread(target=run_second)
        ingest = tasks.ingest_cached

        def ingesting(*args, **kwargs):
            if not thread.is_alive() and not second:  # the first retraining, at its file
                thread.start()
                deadline = time.monotonic() + 120
                while not waiting.wait(0.1) and thread.is_alive():
                    assert time.monotonic() < deadline
            return ingest(*args, **kwargs)

        monkeypatch.setattr(tasks, "ingest_cached", ingesting)
        first = retraining_flow(settings=settings)
        thread.join(300)
        assert second.keys() == {"summary"}, second
        assert waiting.is_set()
        one = [n for n in first.notes if n.startswith("ingested ")]
        assert len(one) == 1 and one[0].startswith("ingested TEST.csv: TEST +1 new, "), first.notes
        assert not [n for n in second["summary"].notes if n.startswith("ingested ")]
        for summary in (first, second["summary"]):
            assert summary.ok and not summary.rejected and summary.results == []
            assert any(n.startswith("TEST: skip (gained 1 row(s) since v1") for n in summary.notes)
        assert len(list((project / "data" / "archive").iterdir())) == 1
        assert not list((project / "data" / "incoming").iterdir())
        assert PriceStore(settings.store_path).manifest("TEST").rows == 121


def test_a_retraining_that_decided_before_another_registered_skips_after_it(
    trained_settings, monkeypatch
):
    """A served (event) retraining and a cron `retrain` at once decide from the same store and
    registry that the ticker needs training. The one that gets the ticker second, after the
    first registered a version on this data, takes the decision again and skips with the
    usual line instead of training and registering the same model twice."""
    from pipelines import tracking
    from pipelines.flows import retraining, retraining_flow

    settings = trained_settings
    write_prices(settings.base_dir / "data" / "incoming" / "TEST.csv", price_frame(121).iloc[[120]])
    first: dict = {}
    fan_out = retraining.map_tickers

    def other_retraining_first(*args, **kwargs):
        if not first:  # this run has decided: the other one runs start to end, then this trains
            first["started"] = True
            other = threading.Thread(
                target=lambda: first.update(s=retraining_flow(settings=settings))
            )
            other.start()
            other.join(600)
        return fan_out(*args, **kwargs)

    monkeypatch.setattr(retraining, "map_tickers", other_retraining_first)
    second = retraining_flow(settings=settings, trigger="new_data")
    assert [(r.ticker, r.version) for r in first["s"].results] == [("TEST", "2")]
    assert second.ok and second.results == []
    decided = [n for n in second.notes if n.startswith("TEST: ")]
    assert decided[0].startswith("TEST: retrain (gained 1 row(s) since v1 ("), second.notes
    assert decided[1:] == ["TEST: skip (unchanged since v2 was trained)"], second.notes
    assert [v.version for v in tracking.versions("test-TEST")] == ["1", "2"]


def test_the_retraining_lock_is_per_ticker(trained_settings, monkeypatch, seen):
    """While one retraining trains TEST, another ticker's retraining goes on at once, and a
    second retraining of TEST waits for the first, then decides on what it registered."""
    from pipelines import tracking
    from pipelines.cli import main
    from pipelines.flows import retraining
    from pipelines.flows.common import TickerResult
    from pipelines.store import PriceStore

    settings = trained_settings
    tracking.connect(settings)  # as the retraining flow does before its branches
    cfg = ["--config", str(settings.base_dir / "mlflow.yaml")]
    write_prices(settings.base_dir / "more" / "OTHER.csv", price_frame(120, seed=1))
    assert main(["ingest", str(settings.base_dir / "more" / "OTHER.csv"), *cfg]) == 0
    write_prices(settings.base_dir / "more" / "TEST.csv", price_frame(121).iloc[[120]])
    assert main(["ingest", str(settings.base_dir / "more" / "TEST.csv"), *cfg]) == 0
    store = PriceStore(settings.store_path)
    training, release, trained = threading.Event(), threading.Event(), []

    def train(settings, ticker, run_tags, prices):  # stands in for train + register
        trained.append((ticker, run_tags["retrain.detail"]))
        if ticker == "TEST" and len(trained) == 1:
            training.set()
            assert release.wait(120)
        return TickerResult(ticker=ticker, version="fake")

    monkeypatch.setattr(retraining, "train_one", train)

    def retrain(ticker: str, out: list) -> threading.Thread:
        def branch() -> None:
            try:
                out.append(retraining.retrain_one(settings, ticker, "cron", None, stored))
            except BaseException as exc:
                out.append(exc)

        stored = retraining.StoredRows(store, ticker)
        thread = threading.Thread(target=branch)
        thread.start()
        return thread

    waits = seen("TEST: waiting for another retraining of TEST")
    first, other, second = [], [], []
    holder = retrain("TEST", first)
    assert training.wait(120), first
    retrain("OTHER", other).join(60)
    assert [r.ticker for r in other] == ["OTHER"]  # done while TEST's lock is held
    late = retrain("TEST", second)
    assert waits.wait(60)
    assert not second  # still waiting
    release.set()
    holder.join(60)
    late.join(60)
    assert [r.ticker for r in first] == [r.ticker for r in second] == ["TEST"]
    assert [t for t, _ in trained] == ["TEST", "OTHER", "TEST"]


def _train(config, *args: str) -> None:
    """`lstm-pipeline ingest` and `run` of TEST in the project of `config`."""
    from pipelines.cli import main

    prices = config.parent / "prices" / "TEST.csv"
    assert main(["ingest", str(prices), "--ticker", "TEST", "--config", str(config)]) == 0
    assert main(["run", "--ticker", "TEST", "--config", str(config), *args]) == 0


def _retrain(config, capsys) -> list[str]:
    from pipelines.cli import main

    capsys.readouterr()
    assert main(["retrain", "--config", str(config), "--set", NO_BACKTEST[0]]) == 0
    return capsys.readouterr().out.splitlines()


def test_another_projects_newer_version_does_not_make_this_project_skip(
    trained_settings, tmp_path, capsys
):
    """Two projects on one tracking store, the same ticker and the same prices file: the
    second trains first on five newer days (v2, another project's). The first project, given
    those days, retrains its champion: before, it skipped, "unchanged since v2 was trained",
    the other project's version."""
    from pipelines import tracking
    from tests.pipelines.cli.conftest import project_beside

    first = trained_settings.base_dir
    other = project_beside(first, tmp_path / "other")
    newer = price_frame(125)
    write_prices(other.parent / "prices" / "TEST.csv", newer)
    _train(other, "--set", NO_BACKTEST[0])
    tracking.connect(trained_settings)
    theirs = tracking.get_version("test-TEST", "2").tags[tracking.TAG_PROJECT]
    assert theirs != (first / ".lstm-project").read_text().strip()
    write_prices(first / "data" / "incoming" / "TEST.csv", newer.iloc[120:])
    lines = _retrain(first / "mlflow.yaml", capsys)
    assert "TEST: retrain (gained 5 row(s) since v1 (2020-06-16))" in lines, lines
    # compared with its own champion v1 on scores
    [line] = [x for x in lines if x.startswith("  registered test-TEST version 3: ")]
    assert "test_rmse" in line and "champion's" in line, line


@pytest.mark.slow  # three trainings in two projects (8 s)
def test_another_projects_champion_does_not_make_this_project_retrain(
    trained_settings, tmp_path, capsys
):
    """The first project holds the champion; the second trains its own prices (v2, refused:
    another project's champion), then the first trains newer days (v3). The second's retrain,
    with nothing new, skips: before, it counted from the first's champion and retrained again
    and again ("stored days through 2020-06-16 changed since v1 was trained on them")."""
    from tests.pipelines.cli.conftest import project_beside

    first = trained_settings.base_dir
    other = project_beside(first, tmp_path / "other")
    write_prices(other.parent / "prices" / "TEST.csv", price_frame(120, seed=7))
    _train(other, "--set", NO_BACKTEST[0])
    write_prices(first / "prices" / "TEST.csv", price_frame(125))
    _train(first / "mlflow.yaml", "--set", NO_BACKTEST[0])
    lines = _retrain(other, capsys)
    assert "TEST: skip (unchanged since v2 was trained)" in lines, lines
    assert "nothing changed: no ticker to retrain" in lines, lines
