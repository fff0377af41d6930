"""`ingest`, and the rules every way into the store keeps: all files or none, no second
ticker by case, no closed day, a damaged store file named, the prices.updated event."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.store import PriceStore
from tests.pipelines.cli.conftest import BIN, _cli, clashing_files
from tests.pipelines.conftest import price_frame, tree_bytes, write_prices
from tests.user_path import cli, user_env


def test_ingest_reports_rows_and_is_idempotent(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    src = str(tiny_project / "prices" / "TEST.csv")
    assert main(["ingest", src, "--config", cfg]) == 0
    assert "TEST +120 new" in capsys.readouterr().out
    assert main(["ingest", src, "--config", cfg]) == 0
    assert "TEST +0 new, 0 replaced, 120 unchanged" in capsys.readouterr().out
    assert PriceStore(tiny_project / "data" / "store").manifest("TEST").rows == 120


def test_bad_input_is_one_line_exit_2_and_store_unchanged(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg])
    store = tiny_project / "data" / "store"
    before = tree_bytes(store)
    capsys.readouterr()
    bad = price_frame(121)
    bad.loc[120, "High"] = bad.loc[120, "Low"] / 2
    path = write_prices(tiny_project / "bad" / "TEST.csv", bad)
    assert main(["ingest", str(path), "--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err and "line 122" in err and "High" in err
    assert tree_bytes(store) == before


@pytest.mark.parametrize(
    ("where", "replace"),
    [("after", False), ("before", False), ("inside", True)],
)
def test_a_split_sized_jump_against_a_stored_close_is_one_line_exit_2(
    tiny_project, capsys, where, replace
):
    """data.max_daily_change also compares a new row with the stored day next to it: a row
    after the stored history, one before it, and (--replace) one that changes a stored day."""
    cfg = str(tiny_project / "mlflow.yaml")
    main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg])
    store = tiny_project / "data" / "store"
    before = tree_bytes(store)
    capsys.readouterr()
    frame = price_frame(121)
    if where == "after":  # the next trading day, at twice the last stored close
        row, neighbour, word = frame.iloc[[120]].copy(), frame.iloc[119], "previous"
    elif where == "before":  # the trading day before the first stored one
        row = frame.iloc[[0]].copy()
        row["Date"] = "2019-12-23"
        neighbour, word = frame.iloc[0], "next"
    else:  # a stored day between two stored days, its close doubled
        row, neighbour, word = frame.iloc[[60]].copy(), frame.iloc[59], "previous"
    close = round(float(neighbour["Close"]) * 2, 4)
    row[["Open", "High", "Low", "Close"]] = close
    path = write_prices(tiny_project / "new" / "TEST.csv", row)
    args = ["ingest", str(path), "--config", cfg] + (["--replace"] if replace else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{path}, line 2, column 'Close'" in err
    assert f"close {close:.15g}" in err
    stored = float(neighbour["Close"])
    assert f"the {word} close {stored:.15g}, stored for TEST {neighbour['Date']}" in err
    assert "max_daily_change" in err
    assert tree_bytes(store) == before


@pytest.mark.parametrize("clash", ["value", "jump"])
def test_ingest_of_several_files_stores_all_or_none(tiny_project, capsys, clash):
    """Each file is checked against the store as the files before it leave it: a clash between
    two of them names both, and nothing is stored, the first file's rows included."""
    cfg = str(tiny_project / "mlflow.yaml")
    first, second = clashing_files(tiny_project, clash)
    where, column = {"value": ("differs from the value", "Open"), "jump": ("the previous close", "Close")}[clash]  # fmt: skip
    store = tiny_project / "data" / "store"
    before = tree_bytes(store)
    capsys.readouterr()
    assert main(["ingest", str(first), str(second), "--config", cfg]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert f"{second}, line 2, column '{column}'" in err
    assert where in err and f"in {first}, line 6" in err
    assert tree_bytes(store) == before

    # without the clash: both files stored, one line each
    third = write_prices(tiny_project / "c" / "TEST.csv", price_frame(130).iloc[125:])
    assert main(["ingest", str(first), str(third), "--config", cfg]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{first}: TEST +5 new") and out[1].startswith(f"{third}: TEST +5 new")
    assert PriceStore(store).manifest("TEST").rows == 130


def _case_twin_refused(ticker: str, twin: str, path: Path) -> str:
    return (
        f"error: {path}: ticker {ticker!r} differs only in case from the stored {twin!r}: "
        f"tickers are case-sensitive, so this would start a second ticker; name it {twin!r}\n"
    )


def test_a_new_ticker_that_differs_from_a_stored_one_only_in_case_is_refused(tiny_project):
    """With TEST stored, `test` from --ticker, from the file's ticker column or from `run FILE
    --ticker` is one line naming TEST, exit 2, and nothing is written (the store's merge
    planning refuses it, so every path that stores a new ticker does)."""
    env = user_env(keep_pythonpath=True)
    src = tiny_project / "prices" / "TEST.csv"
    out = cli(BIN, "ingest", str(src), cwd=tiny_project, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    column = write_prices(
        tiny_project / "new" / "prices.csv", price_frame(120).assign(Ticker="test")
    )
    before = sorted(p.relative_to(tiny_project) for p in tiny_project.rglob("*"))
    store = tree_bytes(tiny_project / "data" / "store")
    for args, path in (
        (["ingest", str(src), "--ticker", "test"], src),
        (["ingest", str(column)], column),
        (["run", str(src), "--ticker", "test"], src),
    ):
        out = cli(BIN, *args, cwd=tiny_project, env=env, timeout=120)
        assert (out.returncode, out.stdout) == (2, ""), (args, out.stdout, out.stderr)
        assert out.stderr == _case_twin_refused("test", "TEST", path), args
        assert sorted(p.relative_to(tiny_project) for p in tiny_project.rglob("*")) == before
        assert tree_bytes(tiny_project / "data" / "store") == store
    # a ticker new in both cases at once is refused too: the store keeps one spelling
    both = write_prices(
        tiny_project / "new" / "both.csv",
        pd.concat([price_frame(3).assign(Ticker=t) for t in ("acme", "ACME")]),
    )
    out = cli(BIN, "ingest", str(both), cwd=tiny_project, env=env, timeout=120)
    assert (out.returncode, out.stdout) == (2, ""), (out.stdout, out.stderr)
    assert out.stderr == (
        f"error: {both}: ticker 'acme' differs only in case from 'ACME', which this ingest also "
        "stores: tickers are case-sensitive, so this would start two tickers; name both alike\n"
    )
    assert tree_bytes(tiny_project / "data" / "store") == store


@pytest.mark.slow  # the retraining flow in a subprocess
def test_retrain_rejects_an_incoming_file_whose_ticker_differs_only_in_case(trained_settings):
    project = trained_settings.base_dir
    incoming = write_prices(project / "data" / "incoming" / "test.csv", price_frame(125))
    store = tree_bytes(trained_settings.store_path)
    out = _cli(project, "retrain")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert len(list((project / "data" / "rejected").glob("test.*.csv"))) == 1  # moved aside
    assert not incoming.exists()
    refused = _case_twin_refused("test", "TEST", incoming).removeprefix("error: ").strip()
    assert f"rejected test.csv: {refused}" in out.stdout.splitlines(), out.stdout
    assert tree_bytes(trained_settings.store_path) == store


@pytest.mark.parametrize(
    ("calendar", "day", "says"),
    [
        ("XNYS", "2020-07-03", "2020-07-03 (Friday) is not a trading day of XNYS (data.calendar)"),
        ("null", "2020-07-04", "2020-07-04 is a Saturday: with data.calendar null"),
    ],
)
def test_a_row_on_a_day_the_exchange_was_closed_is_one_line_exit_2(
    tiny_project, capsys, calendar, day, says
):
    """Live scoring matches forecasts to stored days by position: a row dated on a holiday
    (Independence Day observed) or a weekend would shift them, so ingest refuses it."""
    cfg = str(tiny_project / "mlflow.yaml")
    main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg])
    store = tiny_project / "data" / "store"
    before = tree_bytes(store)
    capsys.readouterr()
    frame = price_frame(135).iloc[120:]  # 2020-06-17 .. 2020-07-08, trading days only
    bad = pd.concat([frame.iloc[:12], frame.iloc[[12]].assign(Date=day), frame.iloc[12:]])
    path = write_prices(tiny_project / "new" / "TEST.csv", bad)
    args = ["ingest", str(path), "--config", cfg, "--set", f"data.calendar={calendar}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{path}, line 14, column 'Date': {says}" in err
    assert tree_bytes(store) == before
    write_prices(path, frame)  # the same days without the closed one
    assert main(args) == 0
    assert PriceStore(store).manifest("TEST").rows == 135


def test_a_damaged_store_file_is_one_line_exit_2_and_left_as_it_was(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    src = str(tiny_project / "prices" / "TEST.csv")
    main(["ingest", src, "--config", cfg])
    data = tiny_project / "data" / "store" / "ticker=TEST" / "data.parquet"
    data.write_bytes(data.read_bytes()[:300])  # a copy cut short
    before = tree_bytes(data.parent)
    capsys.readouterr()
    for command in (["ingest", src], ["status"], ["run", "--ticker", "TEST"]):
        assert main([*command, "--config", cfg]) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, (command, err)
        assert str(data) in err and "not a readable Parquet file" in err
    assert tree_bytes(data.parent) == before


# ---------------------------------------------------------------- against a Prefect API


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_against_a_prefect_api_is_one_line_and_the_event_arrives(tiny_project):
    """With PREFECT_API_URL set, `ingest` emits `prices.updated` and waits until it is sent:
    no Prefect "EventsWorker - Still processing items" warning after its one line."""
    import datetime as dt
    import time

    from prefect import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )
    from prefect.settings import PREFECT_API_URL

    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    env = {**user_env(keep_pythonpath=True), "PREFECT_API_URL": PREFECT_API_URL.value()}
    # a ticker of its own: the other tests' ingests in this process send theirs to this API too
    out = cli(BIN, "ingest", "prices/TEST.csv", "--ticker", "EVT", cwd=tiny_project, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == ""
    assert out.stdout.startswith("prices/TEST.csv: EVT +120 new") and out.stdout.count("\n") == 1

    def arrived() -> list:
        wanted = EventFilter(  # `until` defaults to now
            occurred=EventOccurredFilter(since=since),
            event=EventNameFilter(name=["prices.updated"]),
            resource=EventResourceFilter(id=["lstm.ticker.EVT"]),
        )
        return client.read_events(filter=wanted, limit=10).events

    deadline = time.monotonic() + 60  # the server stores events in batches
    with get_client(sync_client=True) as client:
        while not (events := arrived()):
            assert time.monotonic() < deadline, "the prices.updated event never arrived"
            time.sleep(1)
    assert [e.payload for e in events] == [{"added": 120}]


@pytest.mark.parametrize("given_in", ["environment", "mlflow.yaml", "prefect profile"])
def test_ingest_with_a_prefect_api_that_does_not_answer_stores_and_says_so(tiny_project, given_in):
    """The rows are stored (exit 0); one line says the event was not sent, and why. Both
    streams to one file (`ingest ... >> log 2>&1`): the stored line comes first, as printed.
    The API is the one every command uses (runtime.prefect_server_url), wherever it is set."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    env = user_env(keep_pythonpath=True)
    if given_in == "environment":
        env["PREFECT_API_URL"] = url
    elif given_in == "mlflow.yaml":
        with open(tiny_project / "mlflow.yaml", "a", encoding="utf-8") as fh:
            fh.write(f"runtime:\n  prefect_api_url: {url}\n")
    else:  # what `prefect config set PREFECT_API_URL=...` writes
        profiles = tiny_project / "profiles.toml"
        profiles.write_text(
            f'active = "local"\n\n[profiles.local]\nPREFECT_API_URL = "{url}"\n',
            encoding="utf-8",
        )
        env["PREFECT_PROFILES_PATH"] = str(profiles)
    out = subprocess.run(
        [str(BIN), "ingest", "prices/TEST.csv", "--ticker", "TEST"],
        cwd=tiny_project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:]
    stored, warning = out.stdout.splitlines()
    assert stored.startswith("prices/TEST.csv: TEST +120 new"), out.stdout
    assert warning.startswith(f"warning: prices.updated not sent to {url} (") and warning.endswith(
        "): the rows are stored, but no served retraining starts from them"
    ), out.stdout
    assert PriceStore(tiny_project / "data" / "store").manifest("TEST").rows == 120


def test_a_file_with_prices_only_in_adj_close_is_told_the_column_map_that_stores_it(
    tiny_project, capsys
):
    """Yahoo's `Date, Adj Close, Volume`: the first refusal names data.column_map with a --set
    line that works as printed; a map of date and open only lists the other required prices
    and why they are required (ut4 B1)."""
    import re

    cfg = str(tiny_project / "mlflow.yaml")
    frame = price_frame(20).rename(columns={"Close": "Adj Close"})
    path = write_prices(tiny_project / "adj" / "XA.csv", frame[["Date", "Adj Close", "Volume"]])
    store = tiny_project / "data" / "store"

    assert main(["ingest", str(path), "--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "missing open price column" in err and "data.column_map" in err
    suggested = re.search(r"--set '([^']+)'", err)
    assert suggested, err
    assert not store.exists() or tree_bytes(store) == {}

    partial = "data.column_map={date: Date, open: Adj Close}"
    assert main(["ingest", str(path), "--config", cfg, "--set", partial]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "missing required fields 'high', 'low', 'close'" in err
    assert "features.columns" in err and "high: Adj Close" in err

    assert main(["ingest", str(path), "--config", cfg, "--set", suggested.group(1)]) == 0
    assert "XA +20 new" in capsys.readouterr().out
    stored = pd.read_parquet(store / "ticker=XA")  # as a user reads the store
    assert list(stored["open"]) == list(frame["Adj Close"])
    assert list(stored["volume"]) == list(frame["Volume"].astype(float))


def test_day_first_dates_say_the_file_is_read_month_first(tiny_project, capsys):
    """`04/01/2010` ... `13/01/2010`: the refusal says slash dates are read M/D/YYYY, what the
    first row was read as, and the format to use; nothing is stored (ut4 L6)."""
    cfg = str(tiny_project / "mlflow.yaml")
    frame = price_frame(10, start="2010-01-04")
    frame["Date"] = pd.to_datetime(frame["Date"]).dt.strftime("%d/%m/%Y")
    path = write_prices(tiny_project / "uk" / "UK.csv", frame)
    assert main(["ingest", str(path), "--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{path}, line 9, column 'Date': invalid date '13/01/2010'" in err
    assert "read as M/D/YYYY" in err
    assert "line 2's '04/01/2010' was read as 2010-04-01" in err
    assert "write them as YYYY-MM-DD" in err
    assert not (tiny_project / "data" / "store" / "ticker=UK").exists()
