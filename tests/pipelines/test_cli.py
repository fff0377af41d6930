from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.store import PriceStore
from tests.pipelines.conftest import price_frame, tree_bytes, write_prices
from tests.user_path import (
    REPO,
    TINY,
    assert_only_progress,
    checkout_state,
    cli,
    project_state,
    user_env,
)


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


def test_a_place_the_command_writes_that_cannot_be_written_is_one_line_exit_2(
    tiny_project, capsys, monkeypatch
):
    # data/ is a file, so the store cannot be made: said before anything runs, as init says it
    # (tests/reliability/test_read_only.py: a read-only project through the installed CLI)
    cfg = str(tiny_project / "mlflow.yaml")
    (tiny_project / "data").write_text("not a folder\n", encoding="utf-8")
    assert main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg]) == 2
    store, data = tiny_project / "data" / "store", tiny_project / "data"
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write to {store}: Not a directory ({data})"
    )
    # What the check cannot foresee (a file refused later) is still one line naming the path.
    import pipelines.promotion

    def refused(*args: object) -> str:
        raise PermissionError(13, "Permission denied", str(tiny_project / ".locks" / "x.lock"))

    monkeypatch.setattr(pipelines.promotion, "manual_promote", refused)
    assert main(["promote", "--ticker", "TEST", "--version", "1", "--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tiny_project / '.locks' / 'x.lock'}: Permission denied"


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
    main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg])
    store = tiny_project / "data" / "store"
    before = tree_bytes(store)
    capsys.readouterr()
    frame = price_frame(130)
    first = write_prices(tiny_project / "a" / "TEST.csv", frame.iloc[120:125])
    if clash == "value":  # the same day as the first file's last row, another open
        second = frame.iloc[124:125].copy()
        second["Open"] = second["Open"] * 1.001
        where, column = "differs from the value", "Open"
    else:  # the day after the first file's last row, at twice its close
        second = frame.iloc[125:126].copy()
        second[["Open", "High", "Low", "Close"]] = float(frame["Close"].iloc[124]) * 2
        where, column = "the previous close", "Close"
    second = write_prices(tiny_project / "b" / "TEST.csv", second)
    assert main(["ingest", str(first), str(second), "--config", cfg]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert f"{second}, line 2, column '{column}'" in err
    assert where in err and f"in {first}, line 6" in err
    assert tree_bytes(store) == before

    # without the clash: both files stored, one line each
    third = write_prices(tiny_project / "c" / "TEST.csv", frame.iloc[125:])
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


@pytest.mark.parametrize("clash", ["value", "jump"])
def test_run_refuses_files_that_clash_as_ingest_does_before_any_training(
    tiny_project, capsys, clash
):
    """`run FILE FILE` checks the files as `ingest` merges them: a clash between the two is
    refused with ingest's line, before Prefect, MLflow or any write."""
    cfg = str(tiny_project / "mlflow.yaml")
    main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg])
    store = tiny_project / "data" / "store"
    before = tree_bytes(store)
    capsys.readouterr()
    frame = price_frame(130)
    first = write_prices(tiny_project / "a" / "TEST.csv", frame.iloc[120:125])
    if clash == "value":  # the first file's last day again, another open
        second = frame.iloc[124:126].copy()
        second.loc[124, "Open"] = second.loc[124, "Open"] * 1.001
    else:  # the day after the first file's last row, at twice its close
        second = frame.iloc[125:126].copy()
        second[["Open", "High", "Low", "Close"]] = float(frame["Close"].iloc[124]) * 2
    second = write_prices(tiny_project / "b" / "TEST.csv", second)
    files = [str(first), str(second)]
    names = sorted(p.name for p in tiny_project.iterdir())
    assert main(["run", *files, "--config", cfg]) == 2
    out, err = capsys.readouterr()
    assert (out, len(err.splitlines())) == ("", 1), err
    assert f"in {first}, line 6" in err
    assert tree_bytes(store) == before
    assert sorted(p.name for p in tiny_project.iterdir()) == names  # no mlflow.db, no .prefect
    assert main(["ingest", *files, "--config", cfg]) == 2
    assert capsys.readouterr().err == err


def test_run_judges_the_files_together_as_ingest_stores_them(tiny_project, capsys):
    """Two overlapping files each too short to train pass the pre-check together; nothing is
    stored until it has passed (a tracking server that does not answer stops the run next)."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = str(tiny_project / "mlflow.yaml")
    frame = price_frame(48)
    first = write_prices(tiny_project / "a" / "TEST.csv", frame.iloc[:25])
    second = write_prices(tiny_project / "b" / "TEST.csv", frame.iloc[20:])  # 5 days again
    sets = ["--set", "features.lookback=20", "--set", f"tracking.uri={uri}"]
    for path, rows in ((first, 25), (second, 28)):
        assert main(["run", str(path), "--config", cfg, *sets]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: cannot train TEST on its {rows} rows"), err
    assert main(["run", str(first), str(second), "--config", cfg, *sets]) == 2
    assert capsys.readouterr().err.startswith(f"error: tracking server {uri} does not answer")
    assert not (tiny_project / "data" / "store").exists()


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


@pytest.mark.slow  # the CLI in subprocesses, or trainings: CI runs it
def test_a_tracking_server_that_does_not_answer_is_one_line_exit_2(tiny_project, capsys):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = str(tiny_project / "mlflow.yaml")
    main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg])
    capsys.readouterr()
    for command in (["status"], ["score"], ["run", "--ticker", "TEST"]):
        assert main([*command, "--config", cfg, "--set", f"tracking.uri={uri}"]) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if "error" in line.lower()]
        assert errors == [f"error: tracking server {uri} does not answer ([Errno 111] "
                          "Connection refused): start it, or point tracking.uri (mlflow.yaml) or "
                          "MLFLOW_TRACKING_URI at one that does"], (command, err)  # fmt: skip
        assert not any("Traceback" in line for line in err)


@pytest.mark.slow  # the CLI in subprocesses, or trainings: CI runs it
def test_run_trains_every_ticker_named(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    src = str(tiny_project / "prices" / "TEST.csv")
    for ticker in ("AAA", "BBB"):
        assert main(["ingest", src, "--ticker", ticker, "--config", cfg]) == 0
    assert main(["run", src, "--ticker", "AAA", "--ticker", "BBB", "--config", cfg]) == 2
    assert "give it once" in capsys.readouterr().err
    assert main(["run", "--ticker", "AAA", "--ticker", "BBB", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "registered test-AAA version 1" in out and "registered test-BBB version 1" in out


def test_unknown_config_key_exit_2_names_key(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    assert main(["ingest", "x.csv", "--config", cfg, "--set", "training.epoch=3"]) == 2
    assert (
        capsys.readouterr().err == "error: --set training.epoch=3: Extra inputs are not permitted\n"
    )
    text = (tiny_project / "mlflow.yaml").read_text(encoding="utf-8")
    (tiny_project / "mlflow.yaml").write_text(text + "monitoring:\n  window: 5\n", encoding="utf-8")
    assert main(["ingest", "x.csv", "--config", cfg]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {cfg}: monitoring.window: Extra inputs are not permitted\n"
    )


def test_a_bad_set_value_is_blamed_on_the_option_and_a_bad_file_value_on_the_file(tiny_project):
    """`--set training.epochs=abc` names the option as typed, not mlflow.yaml, which holds no
    such value; the same value in the file names the file; the last --set of a key wins."""
    env = user_env(keep_pythonpath=True)
    cfg = tiny_project / "mlflow.yaml"
    bad = "Input should be a valid integer, unable to parse string as an integer"
    for sets, says in (
        (["--set", "training.epochs=abc"], f"--set training.epochs=abc: {bad}"),
        (["--set=training.epochs=abc", "--set=training.epochs=2"], None),
        (["--set=training.epochs=2", "--set=training.epochs=x"], f"--set training.epochs=x: {bad}"),
        (["--set", "training.epochs=yes"], "--set training.epochs=yes: expected a number, got a "
                                           "boolean (true/false/yes/no)"),
        (["--set", "features.columns=[close, 7]"], "--set features.columns=[close, 7]: "
                                                   "features.columns.1: Input should be a valid string"),
        (["--set", "training.epochs"], "--set training.epochs: expected section.key=value"),
    ):  # fmt: skip
        out = cli(BIN, "status", *sets, cwd=tiny_project, env=env, timeout=120)
        if says is None:
            assert out.returncode == 0, out.stderr
            continue
        assert (out.returncode, out.stderr) == (2, f"error: {says}\n"), sets
    text = cfg.read_text(encoding="utf-8").replace("  epochs: 1\n", "  epochs: abc\n")
    cfg.write_text(text, encoding="utf-8")
    out = cli(BIN, "status", "--set", "training.batch_size=8", cwd=tiny_project, env=env)
    assert (out.returncode, out.stderr) == (2, f"error: {cfg}: training.epochs: {bad}\n")
    # a whole section's check, with a key of it given by --set: both named
    out = cli(BIN, "status", "--set", "features.target=volume", cwd=tiny_project, env=env)
    assert out.returncode == 2 and out.stderr.startswith(
        f"error: {cfg}: features (with --set features.target=volume): target must be one of"
    ), out.stderr


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        ("status", "schedule.cron=61 25 * * 1-5"),
        ("status", "schedule.timezone=Mars/Olympus"),
        ("status", "tuning.cron=0 3 * * 8"),
        ("status", "tracking.uri=foo://bar"),
        ("ingest", "training.epochs=true"),
        ("ingest", "monitoring.window_days=yes"),
        # MLflow's alias rules: reserved names, characters, empty, length
        ("run", "registry.alias=latest"),
        ("status", "registry.alias=LaTeSt"),
        ("status", "registry.alias=v3"),
        ("status", "registry.alias=V12"),
        ("run", "registry.alias=Champion!"),
        ("status", "registry.alias=a b"),
        ("status", "registry.alias="),
        ("status", f"registry.alias={'a' * 256}"),
    ],
)
def test_a_setting_nothing_can_use_is_one_line_exit_2(tiny_project, capsys, command, setting):
    cfg = str(tiny_project / "mlflow.yaml")
    before = sorted(p.name for p in tiny_project.iterdir())
    args = [str(tiny_project / "prices" / "TEST.csv")] if command == "ingest" else []
    assert main([command, *args, "--config", cfg, "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --set {setting}: "), err
    assert sorted(p.name for p in tiny_project.iterdir()) == before  # no store, no mlflow.db


def test_run_refuses_a_bad_schedule_before_it_trains(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    assert main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg]) == 0
    before = sorted(p.name for p in tiny_project.iterdir())
    capsys.readouterr()
    code = main(["run", "--ticker", "TEST", "--config", cfg, "--set", "schedule.cron=61 25 * * *"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --set schedule.cron=61 25 * * *: '61 25 * * *' is not a valid cron expression: "
        "Bad minute"
    )
    assert sorted(p.name for p in tiny_project.iterdir()) == before  # no mlflow.db, no .prefect


def test_more_backtest_folds_than_test_rows_is_one_line_before_any_run(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    src = str(tiny_project / "prices" / "TEST.csv")
    assert main(["ingest", src, "--config", cfg]) == 0
    before = sorted(p.name for p in tiny_project.iterdir())
    capsys.readouterr()
    folds = ["--set", "evaluation.backtest_folds=500"]
    for args in (["--ticker", "TEST"], [src]):  # a stored ticker, and a file to ingest first
        assert main(["run", *args, "--config", cfg, *folds]) == 2
        err = capsys.readouterr().err.strip()
        where = str(tiny_project / "data" / "store") if args[0] == "--ticker" else src
        assert err == (
            f"error: {where}: cannot backtest TEST on its 120 rows with {cfg}: test part has "
            "18 rows, fewer than 500 backtest folds: lower evaluation.backtest_folds (0 turns "
            "the backtest off) or raise evaluation.test_fraction"
        )
        # no MLflow store, no Prefect home: nothing ran
        assert sorted(p.name for p in tiny_project.iterdir()) == before


def test_a_key_twice_in_the_config_is_one_line_exit_2(tiny_project, capsys):
    cfg = tiny_project / "mlflow.yaml"
    lines = cfg.read_text(encoding="utf-8").splitlines()
    first, again = lines.index("training:") + 1, len(lines) + 1
    cfg.write_text("\n".join([*lines, "training:", "  epochs: 5", ""]), encoding="utf-8")
    assert main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {cfg}: training: given twice, on line {first} and line {again}: keep one of them"
    )
    assert not (tiny_project / "data").exists()


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("init", "ingest", "run", "retrain", "forecast", "promote", "rollback", "serve"):
        assert command in out.stdout


# ---------------------------------------------------------------- a project folder of its own

BIN = Path(sys.executable).with_name("lstm-pipeline")


def test_outside_any_project_the_cli_names_init(tmp_path):
    out = cli(BIN, "run", cwd=tmp_path, env=user_env(keep_pythonpath=True), timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        f"error: no mlflow.yaml in {tmp_path.resolve()} or any folder above it (and no --config "
        "or LSTM_PIPELINE_CONFIG); create a project here with: lstm-pipeline init"
    )
    assert list(tmp_path.iterdir()) == []


def test_serve_takes_a_repeated_ticker_like_every_other_command(tiny_project, monkeypatch):
    """`serve --ticker A --ticker B` serves both (its former `--tickers A B` took the prefix
    `--ticker` for itself and kept the last one only); a bad name is one line, exit 2, and
    nothing is served."""
    from pipelines import serve as serve_module

    served = []
    monkeypatch.setattr(
        serve_module, "serve", lambda settings, path, overrides, tickers: served.append(tickers)
    )
    cfg = str(tiny_project / "mlflow.yaml")
    assert main(["serve", "--ticker", "AAA", "--ticker", "BBB", "--config", cfg]) == 0
    assert main(["serve", "--config", cfg]) == 0  # the default: every stored ticker
    assert served == [["AAA", "BBB"], None]

    env = user_env(keep_pythonpath=True)
    out = cli(BIN, "serve", "--ticker", "AAA", "--ticker", "../x", cwd=tiny_project, env=env)
    assert (out.returncode, out.stdout) == (2, ""), (out.returncode, out.stdout, out.stderr)
    assert out.stderr == (
        "error: --ticker: invalid ticker '../x': only letters, digits, '.', '_' and '-' are "
        "allowed\n"
    )
    out = cli(BIN, "serve", "--tickers", "AAA", cwd=tiny_project, env=env)
    assert out.returncode == 2 and "unrecognized arguments: --tickers" in out.stderr, out.stderr
    out = cli(BIN, "serve", "--help", cwd=tiny_project, env=env)
    assert "--ticker TICKERS" in out.stdout and "repeatable" in out.stdout, out.stdout


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_demo_and_serve_settle_runs_a_killed_command_left_running(
    tiny_settings, monkeypatch, command
):
    """`demo` and `serve` use the project's tracking store as the other commands do: a run a
    killed command left RUNNING is marked FAILED before their flows start."""
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.cli import commands
    from pipelines.config import resolve_tracking_uri
    from pipelines.run_owner import TAG_SETTLED
    from tests.pipelines.test_run_owner import ended_process_tags

    client = MlflowClient(resolve_tracking_uri(tiny_settings))
    killed = client.create_run(tracking.connect(tiny_settings), tags=ended_process_tags())
    run_id = killed.info.run_id
    seen = []  # the run's status when the flows would start (they do not, here)

    def flows_start(*args, **kwargs):
        seen.append(client.get_run(run_id).info.status)

    monkeypatch.setattr(commands, "_before_flows", flows_start)
    monkeypatch.setattr("pipelines.demo.run_demo", flows_start)
    monkeypatch.setattr("pipelines.serve.serve", flows_start)
    assert main([command, "--config", str(tiny_settings.base_dir / "mlflow.yaml")]) == 0
    assert seen and set(seen) == {"FAILED"}, seen
    assert "marked FAILED" in client.get_run(run_id).data.tags[TAG_SETTLED]


def _display_width(text: str) -> int:
    """Terminal columns: East Asian wide and full-width characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def test_the_status_table_lines_up_a_cjk_ticker_with_an_ascii_one(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    src = str(tiny_project / "prices" / "TEST.csv")
    for ticker in ("平安银行", "TEST"):
        assert main(["ingest", src, "--ticker", ticker, "--config", cfg]) == 0
    capsys.readouterr()
    out = cli(BIN, "status", cwd=tiny_project, env=user_env(keep_pythonpath=True), timeout=120)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert [row.split()[0] for row in rows] == ["TEST", "平安银行"], out.stdout
    # every line as wide on screen as the header, each ticker ending under "ticker"
    assert [_display_width(row) for row in rows] == [_display_width(header)] * 2, out.stdout
    lines = [header, *rows]
    words = ["ticker", "TEST", "平安银行"]
    ends = [_display_width(x[: x.index(w) + len(w)]) for x, w in zip(lines, words, strict=True)]
    assert ends == [ends[0]] * 3, out.stdout


@pytest.mark.slow  # the CLI in subprocesses: CI runs it
def test_init_refuses_to_overwrite_and_run_names_ingest_for_an_unstored_ticker(tmp_path):
    env = user_env(keep_pythonpath=True)
    assert cli(BIN, "init", "p", cwd=tmp_path, env=env, timeout=120).returncode == 0
    project = tmp_path / "p"
    before = (project / "mlflow.yaml").read_bytes()
    again = cli(BIN, "init", cwd=project, env=env, timeout=120)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "already exists" in again.stderr and (project / "mlflow.yaml").read_bytes() == before
    # `run` alone trains data.sources: the default names the repository's sample.
    out = cli(BIN, "run", cwd=project, env=env, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "data.sources" in out.stderr and "run --ticker T" in out.stderr
    # `tune` checks the same before any flow runs: one line, no traceback, nothing written.
    out = cli(BIN, "tune", cwd=project, env=env, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "data.sources" in out.stderr and "tune --ticker T" in out.stderr
    out = cli(BIN, "tune", "--ticker", "ACME", cwd=project, env=env, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no prices stored for ticker 'ACME'" in out.stderr
    assert not (project / ".optuna").exists() and not (project / "mlflow.db").exists()
    # From a subfolder, found through the parents.
    out = cli(BIN, "run", "--ticker", "ACME", cwd=project / "data", env=env, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        f"error: no prices stored for ticker 'ACME' in {project.resolve() / 'data' / 'store'}: "
        "store them first with: lstm-pipeline ingest FILE --ticker ACME"
    )


@pytest.mark.slow  # a training in a subprocess, interrupted
@pytest.mark.parametrize("signalled", ["group", "command"])
def test_ctrl_c_during_run_is_one_line_exit_130_and_a_failed_mlflow_run(tmp_path, signalled):
    """Ctrl-C while `run` trains: after the progress lines only `interrupted` (no Prefect
    crash lines, no traceback), exit code 130, the MLflow run FAILED, no process left. A
    terminal signals its whole foreground process group (Prefect's temporary API server
    included); `kill -INT` signals the command alone."""
    import signal
    import threading

    from mlflow.tracking import MlflowClient

    from tests.pipelines.conftest import new_tiny_project
    from tests.user_path import PROGRESS_LINE

    project = new_tiny_project(tmp_path / "project")
    proc = subprocess.Popen(
        [str(BIN), "run", "--set=training.epochs=1000", "--set=evaluation.backtest_folds=0"],
        cwd=project,
        env=user_env(keep_pythonpath=True),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's command has
    )
    lines: list[str] = []
    training = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if " epoch 1/1000 " in line:
                training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert training.wait(300), "\n".join(lines[-20:])
        if signalled == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=300)
        reader.join(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    err = "\n".join(lines)
    assert code == 130, err
    assert "Crash detected" not in err and "Traceback" not in err, err
    assert [line for line in lines if not PROGRESS_LINE.match(line)] == ["interrupted"], err
    assert lines[-1] == "interrupted"
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    with pytest.raises(ProcessLookupError):  # Prefect's server stopped with the command
        os.killpg(proc.pid, 0)


def _prefect_servers(home: Path) -> list[int]:
    """Prefect's temporary API servers running with PREFECT_HOME `home`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if b"prefect.server.api.server:create_app" not in (entry / "cmdline").read_bytes():
                continue
            pairs = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)
        if os.path.realpath(env.get("PREFECT_HOME", "")) == os.path.realpath(home):
            found.append(int(entry.name))
    return found


@pytest.mark.slow  # a forecast in a subprocess, interrupted while its server starts
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_ctrl_c_while_prefect_server_starts_is_one_line_exit_130_and_no_process_left(tmp_path):
    """The terminal's Ctrl-C (its whole process group) once Prefect's temporary server has
    started, while the command loads TensorFlow: `interrupted`, exit 130, the server stopped."""
    import signal
    import time

    from tests.pipelines.conftest import new_tiny_project
    from tests.user_path import PROGRESS_LINE, prefect_server_child

    project = new_tiny_project(tmp_path / "project")
    proc = subprocess.Popen(
        [str(BIN), "forecast", "--ticker", "TEST"],
        cwd=project,
        env=user_env(keep_pythonpath=True),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's command has
    )
    try:
        t0, server = time.monotonic(), None
        while server is None and proc.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.05)
            server = prefect_server_child(proc.pid)
        assert server is not None, proc.communicate()[1][-3000:]
        # the server writes to the command's stderr, not where TensorFlow's lines are caught
        server_stderr = os.readlink(f"/proc/{server}/fd/2")
        command_stderr = f"pipe:[{os.fstat(proc.stderr.fileno()).st_ino}]"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = err.splitlines()
    assert proc.returncode == 130, err
    assert [line for line in lines if not PROGRESS_LINE.match(line)] == ["interrupted"], err
    assert server_stderr == command_stderr
    with pytest.raises(ProcessLookupError):  # Prefect's server stopped with the command
        os.killpg(proc.pid, 0)
    assert _prefect_servers(project / ".prefect") == []


@pytest.mark.slow  # the CLI in a subprocess
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_prefect_server_that_does_not_start_fails_the_command_with_prefects_error(tmp_path):
    from tests.pipelines.conftest import new_tiny_project

    project = new_tiny_project(tmp_path / "project")
    env = user_env(keep_pythonpath=True)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "1"  # it needs more
    out = cli(BIN, "forecast", "--ticker", "TEST", cwd=project, env=env, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.splitlines()[-1] == (
        "RuntimeError: Timed out while attempting to connect to ephemeral Prefect API server."
    ), out.stderr[-3000:]
    assert _prefect_servers(project / ".prefect") == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_init_where_no_folder_can_be_made_is_one_line_exit_2(tmp_path, capsys):
    assert main(["init", "/proc/forbidden"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: cannot create a project in /proc/forbidden: No such file or directory")
    # A failure half-way (data/ is a file, so data/store cannot be made): one line naming
    # the path, and the mlflow.yaml written before it is gone again.
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "data").write_text("not a folder\n", encoding="utf-8")
    assert main(["init", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: cannot create a project in {tmp_path / 'p'}: Not a directory "
        f"({tmp_path / 'p' / 'data' / 'store'})"
    )
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["data"]


@pytest.mark.slow
def test_new_users_path_from_a_folder_of_its_own(tmp_path):
    """README's path with the installed command: init, ingest, run, forecast, models serve."""
    import json
    import urllib.request

    from pipelines.servers import start_model_server

    env = user_env(keep_pythonpath=True)  # PYTHONPATH: a worktree's code over the editable one
    before = checkout_state()
    prices = write_prices(tmp_path / "downloads" / "acme.csv", price_frame(120))
    assert cli(BIN, "init", "acme", cwd=tmp_path, env=env).returncode == 0
    project = tmp_path / "acme"
    out = cli(BIN, "ingest", str(prices), "--ticker", "ACME", cwd=project / "data", env=env)
    assert out.returncode == 0, out.stderr[-3000:]

    out = cli(BIN, "run", "--ticker", "ACME", *TINY, cwd=project, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CHAMPION" in out.stdout, out.stdout
    assert f"sqlite:///{project.resolve() / 'mlflow.db'}" in out.stdout  # the MLflow UI line
    assert_only_progress(out)
    for step in ("epoch 1/1", "evaluating on", "backtest:", "logging the model"):
        assert step in out.stderr, step

    out = cli(BIN, "forecast", "--ticker", "ACME", cwd=project, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_only_progress(out)
    assert (project / "data" / "forecasts" / "ACME.parquet").is_file()
    assert project_state(project) == []
    assert checkout_state() == before

    # `mlflow models serve` on the champion, from the project folder, as the README says.
    server = start_model_server(
        "models:/lstm-ACME@champion", "sqlite:///mlflow.db", project, timeout=300
    )
    try:
        frame = price_frame(120).tail(30)  # Date, Open, High, ... as downloaded
        frame.columns = [c.lower() for c in frame.columns]
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)})
        request = urllib.request.Request(
            f"{server.url}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as resp:
            predictions = json.loads(resp.read())["predictions"]
    finally:
        server.stop()
    assert len(predictions) == 1 and predictions[0]["forecast"] > 0


# ---------------------------------------------------------------- forecast and score: user errors


def test_forecast_days_below_one_is_one_line_exit_2_and_writes_nothing(trained_settings, capfd):
    project = trained_settings.base_dir
    forecasts = project / "data" / "forecasts"
    before = tree_bytes(forecasts)
    for days in ("0", "-2"):
        code = main(
            [
                "forecast",
                "--ticker",
                "TEST",
                "--days",
                days,
                "--config",
                str(project / "mlflow.yaml"),
            ]
        )
        out = capfd.readouterr()
        assert (code, out.out) == (2, ""), (code, out)
        assert out.err == f"error: --days {days}: days must be >= 1\n"
    assert tree_bytes(forecasts) == before


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command in a subprocess: Prefect's own log lines would show on stderr."""
    return cli(BIN, *args, cwd=project, env=user_env(keep_pythonpath=True), timeout=300)


@pytest.mark.slow  # the CLI in subprocesses, or trainings: CI runs it
def test_forecast_beyond_the_calibrated_days_is_one_line_exit_2(trained_settings):
    project = trained_settings.base_dir
    forecasts = project / "data" / "forecasts"
    before = tree_bytes(forecasts)
    # The champion was trained with evaluation.forecast_days = 3.
    out = _cli(project, "forecast", "--ticker", "TEST", "--days", "300")
    assert (out.returncode, out.stdout) == (2, ""), (out.returncode, out.stdout, out.stderr)
    assert out.stderr == (
        "error: TEST: test-TEST v1: days 300 is out of range: this model forecasts up to 3 "
        "day(s) ahead (the evaluation.forecast_days it was trained with): ask for 1 to 3, or "
        "raise evaluation.forecast_days and retrain\n"
    )
    assert tree_bytes(forecasts) == before


@pytest.mark.slow  # the CLI in subprocesses, or trainings: CI runs it
def test_forecast_without_a_champion_names_the_way_to_one(trained_settings):
    from mlflow import MlflowClient

    from pipelines import tracking

    project = trained_settings.base_dir
    forecasts = project / "data" / "forecasts"
    before = tree_bytes(forecasts)
    out = _cli(project, "forecast", "--ticker", "NOPE")
    assert (out.returncode, out.stdout) == (2, ""), (out.returncode, out.stdout, out.stderr)
    assert out.stderr == (
        "error: NOPE: test-NOPE has no registered version yet, so no 'champion': train one "
        "first with: lstm-pipeline run --ticker NOPE\n"
    )
    # A version registered but not promoted: training again would not help, promoting does.
    # (v1 made to look refused, as the promotion gate tags a version it refuses)
    tracking.connect(trained_settings)
    MlflowClient().delete_registered_model_alias("test-TEST", "champion")
    why = "refused: test_rmse 0.9 is worse than the naive forecast's 0.5 by more than 10%"
    tracking.tag_version(
        "test-TEST", "1", {tracking.TAG_PROMOTED: "false", tracking.TAG_REASON: why}
    )
    out = _cli(project, "forecast", "--ticker", "TEST")
    assert (out.returncode, out.stdout) == (2, ""), (out.returncode, out.stdout, out.stderr)
    assert out.stderr == (
        f"error: TEST: test-TEST has no 'champion' alias: its latest version, v1, is not champion "
        f"({why}); to forecast with it anyway: lstm-pipeline promote --ticker TEST --version 1\n"
    )
    assert tree_bytes(forecasts) == before


def _unreadable_log_is_one_line_exit_2(project: Path, commands: tuple[str, ...]) -> None:
    bad = project / "data" / "forecasts" / "log" / "ticker=TEST" / "2017-11-20_v1.parquet"
    bad.write_text("garbage\n")
    for command in commands:
        out = _cli(project, command)
        assert (out.returncode, out.stdout) == (2, ""), (command, out.returncode, out.stdout)
        [line] = out.stderr.splitlines()
        assert line.startswith(f"error: {bad}: not a readable forecast-log Parquet file"), line


@pytest.mark.slow  # the CLI in subprocesses: CI runs it
def test_score_with_an_unreadable_log_file_is_one_line_exit_2(trained_settings):
    _unreadable_log_is_one_line_exit_2(trained_settings.base_dir, ("score", "status"))


@pytest.mark.slow  # the retraining flow in a subprocess
def test_retrain_with_an_unreadable_log_file_is_one_line_exit_2(trained_settings):
    _unreadable_log_is_one_line_exit_2(trained_settings.base_dir, ("retrain",))


SHARED_PING_AN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "平安银行.csv"


@pytest.mark.slow  # a training on 6,000 real rows
@pytest.mark.shared
@pytest.mark.skipif(not SHARED_PING_AN.is_file(), reason=f"{SHARED_PING_AN} is absent")
def test_ping_an_forecast_days_are_shanghai_shenzhen_trading_days(tmp_path):
    """The tutorial's file, a user's own project and `data.calendar: XSHG`: the data ends on
    Friday 2023-04-28 and the exchanges were closed for May Day, 1 to 3 May 2023."""
    env = user_env(keep_pythonpath=True)
    assert cli(BIN, "init", "p", cwd=tmp_path, env=env, timeout=120).returncode == 0
    project = tmp_path / "p"
    # the new project's calendar is New York's: Shenzhen traded on Thanksgiving 1997
    out = cli(BIN, "ingest", str(SHARED_PING_AN), "--ticker", "PAB", cwd=project, env=env)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr[-2000:]
    assert out.stderr == (
        f"error: {SHARED_PING_AN}, line 4, column '日期': 1997-11-27 (Thursday) is not a trading "
        "day of XNYS (data.calendar): remove the row, or set data.calendar to the exchange the "
        "prices come from\n"
    )
    assert not (project / "data" / "store" / "ticker=PAB").exists()
    xshg = "--set=data.calendar=XSHG"
    out = cli(BIN, "ingest", str(SHARED_PING_AN), "--ticker", "PAB", xshg, cwd=project, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    settings = [*TINY, "--set=evaluation.backtest_folds=0", xshg]
    out = cli(BIN, "run", "--ticker", "PAB", *settings, cwd=project, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    out = cli(BIN, "forecast", "--ticker", "PAB", cwd=project, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import pandas as pd

    dates = pd.read_parquet(project / "data" / "forecasts" / "PAB.parquet")["expected_date"]
    assert [str(d) for d in dates] == [
        "2023-05-04",
        "2023-05-05",
        "2023-05-08",
        "2023-05-09",
        "2023-05-10",
    ]


# The MSFT sample's rows of 30 and 31 October 2017, as a user's next download.
LATE_MSFT = (
    "Date,Open,High,Low,Close,Volume,OpenInt\n"
    "2017-10-30,83.8,84.325,83.105,83.89,31756653,0\n"
    "2017-10-31,84.36,84.36,83.11,83.18,27086575,0\n"
)


def _warnings(stderr: str) -> list[str]:
    """The gap warnings of a command's stderr, without their time stamps."""
    return [x.split(" ", 1)[1] for x in stderr.splitlines() if "sessions missing" in x]


@pytest.mark.slow  # init, ingest, a tiny training, forecast, ingest, score, retrain: subprocesses
def test_forecasts_for_sessions_missing_from_the_store_are_not_scored(tmp_path):
    """A user's test: forecasts made on 2017-10-13 for the 16th to the 20th were scored against
    the prices of the 30th and 31st, the next stored days, as the 10 New York sessions between
    were never ingested; nothing said so, and the coverage 0 could have called a retraining."""
    env = user_env(keep_pythonpath=True)
    lines = (REPO / "data" / "msft.csv").read_text(encoding="utf-8").splitlines()
    history = [lines[0], *[x for x in lines[1:] if x < "2017-10-14"][-150:]]  # to the 13th
    assert cli(BIN, "init", "p", cwd=tmp_path, env=env, timeout=120).returncode == 0
    project = tmp_path / "p"
    (project / "head.csv").write_text("\n".join(history) + "\n", encoding="utf-8")
    (project / "late.csv").write_text(LATE_MSFT, encoding="utf-8")
    out = cli(BIN, "ingest", "head.csv", "--ticker", "MSFT", cwd=project, env=env)
    assert (out.returncode, out.stderr) == (0, ""), out.stderr  # a first ingest: no warning
    out = cli(BIN, "run", "--ticker", "MSFT", *TINY, cwd=project, env=env, timeout=600)
    assert out.returncode == 0 and "CHAMPION" in out.stdout, out.stderr[-3000:]
    out = cli(BIN, "forecast", "--ticker", "MSFT", cwd=project, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    out = cli(BIN, "ingest", "late.csv", "--ticker", "MSFT", cwd=project, env=env)
    assert out.returncode == 0, out.stderr
    assert "MSFT +2 new" in out.stdout
    assert_only_progress(out)
    assert _warnings(out.stderr) == [
        "MSFT: 10 XNYS sessions missing between 2017-10-13 and 2017-10-30 "
        "(2017-10-16..2017-10-27): forecasts for them are not scored"
    ]
    assert len(out.stderr.splitlines()) == 1

    out = cli(BIN, "score", cwd=project, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # the five forecasts (16th to 20th) are not scored: two would have landed on the 30th
    # and 31st, the other three's days went by unstored
    assert "MSFT: 5 forecasts not scored: their days are missing from the store" in out.stdout
    out = cli(BIN, "status", "--json", cwd=project, env=env, timeout=300)
    [row] = json.loads(out.stdout)
    assert (row["not_scored"], row["pending"], row["scored_days"]) == (5, 0, 0), row
    assert row["live_rmse"] is None and not row["degraded"]

    # the retraining's incoming files are checked alike (a file named by its ticker; enough
    # new rows asked for that this one does not train)
    nov = LATE_MSFT.splitlines()[0] + "\n2017-11-10,83.79,84.095,83.23,83.87,19396301,0\n"
    (project / "data" / "incoming" / "MSFT.csv").write_text(nov, encoding="utf-8")
    out = cli(BIN, "retrain", "--set=data.min_new_rows=50", cwd=project, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _warnings(out.stderr) == [
        "MSFT: 7 XNYS sessions missing between 2017-10-31 and 2017-11-10 "
        "(2017-11-01..2017-11-09): forecasts for them are not scored"
    ]


# ---------------------------------------------------------------- promotion


@pytest.mark.slow  # a training in a subprocess
def test_a_champion_that_cannot_be_rescored_keeps_the_alias(trained_settings):
    from pipelines import tracking

    project = trained_settings.base_dir
    [files] = (project / "mlartifacts").glob("models/m-*")  # v1's model, the champion
    shutil.rmtree(files)
    out = _cli(project, "run", "--ticker", "TEST", "--set", "evaluation.backtest_folds=0")
    assert out.returncode == 0, (out.stdout, out.stderr)
    [line] = [x.strip() for x in out.stdout.splitlines() if "registered test-TEST" in x]
    assert line.startswith(
        "registered test-TEST version 2: not promoted (refused: champion v1 could not be "
        "re-scored ("
    ), line
    assert line.endswith(
        "so it keeps the alias; to promote this version anyway: "
        "lstm-pipeline promote --ticker TEST --version 2)"
    ), line
    assert "ERROR" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    tracking.connect(trained_settings)
    assert tracking.champion("test-TEST", "champion").version == "1"
    v2 = tracking.get_version("test-TEST", "2").tags
    assert (
        v2[tracking.TAG_PROMOTED] == "false" and "could not be re-scored" in v2["promotion.reason"]
    )


# ---------------------------------------------------------------- a moved project


def test_a_moved_project_stops_in_one_line_before_writing(trained_settings, tmp_path, capsys):
    """SQLite's store keeps absolute artifact paths: after a move, no command that uses MLflow
    may read or write the old place (nor re-create it), and the error names it."""
    old = trained_settings.base_dir
    moved = shutil.move(old, tmp_path / "moved")
    cfg = str(moved / "mlflow.yaml")
    before = tree_bytes(moved)
    commands = (
        ["forecast", "--ticker", "TEST"],
        ["run", "--ticker", "TEST"],
        ["retrain"],
        ["score"],
        ["status"],
        ["promote", "--ticker", "TEST", "--version", "1"],
    )
    for command in commands:
        assert main([*command, "--config", cfg]) == 2, command
        out = capsys.readouterr()
        assert out.out == "", (command, out.out)
        [line] = out.err.splitlines()
        assert line.startswith(f"error: {moved / 'mlflow.db'} records the artifacts"), line
        assert (
            f"in {old / 'mlartifacts'}, but tracking.artifact_location gives "
            f"{moved / 'mlartifacts'}, and MLflow keeps the folder" in line
        ), line
        assert f"move the project back to {old}, where it was then, or use a new" in line, line
    assert not old.exists()
    assert tree_bytes(moved) == before


def test_a_changed_artifact_location_names_both_folders_and_the_ways_out(trained_settings, capsys):
    """tracking.artifact_location edited after the first run: MLflow keeps the folder the
    experiment was made with, so every command that uses MLflow stops in one line naming the
    recorded folder and the configured one, and how to go on; nothing is written."""
    project = trained_settings.base_dir
    cfg = project / "mlflow.yaml"
    text = cfg.read_text(encoding="utf-8")
    edited = text.replace(
        "  experiment: tests\n", "  experiment: tests\n  artifact_location: runs/a\n"
    )
    cfg.write_text(edited, encoding="utf-8")
    before = tree_bytes(project)
    expected = (
        f"error: {project / 'mlflow.db'} records the artifacts of experiment 'tests' in "
        f"{project / 'mlartifacts'}, but tracking.artifact_location gives {project / 'runs' / 'a'}, "
        "and MLflow keeps the folder an experiment was made with: set "
        "tracking.artifact_location back to mlartifacts, or use a new tracking.experiment or "
        "tracking database (put mlflow.db aside, or change tracking.uri) and train again from "
        "the stored prices (lstm-pipeline retrain)\n"
    )
    out = _cli(project, "run", "--ticker", "TEST")
    assert (out.returncode, out.stdout, out.stderr) == (2, "", expected)
    for command in (["forecast", "--ticker", "TEST"], ["retrain"], ["status"]):
        assert main([*command, "--config", str(cfg)]) == 2, command
        assert tuple(capsys.readouterr()) == ("", expected), command
    assert tree_bytes(project) == before and not (project / "runs").exists()
    cfg.write_text(text, encoding="utf-8")  # set back: the store serves again
    assert main(["status", "--config", str(cfg)]) == 0


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"lstm-pipeline {version('lstm-stock-pipeline')}\n", "")


@pytest.mark.usefixtures("prefect_harness")
def test_score_an_unknown_ticker_is_one_line_exit_2_and_a_known_one_shows_alone(
    trained_settings, capsys
):
    project = trained_settings.base_dir
    cfg = str(project / "mlflow.yaml")
    other = write_prices(project / "more" / "OTHER.csv", price_frame(120, seed=1))
    assert main(["ingest", str(other), "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["score", "--ticker", "NOPE", "--config", cfg]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: no prices stored for ticker 'NOPE' in {trained_settings.store_path}: "
        "store them first with: lstm-pipeline ingest FILE --ticker NOPE\n"
    )
    assert main(["score", "--ticker", "test", "--config", cfg]) == 2
    assert capsys.readouterr().err == (
        f"error: no prices stored for ticker 'test' in {trained_settings.store_path}: "
        "tickers are case-sensitive, and 'TEST' is stored\n"
    )

    def first_column(out: str) -> list[str]:
        lines = out.splitlines()
        header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["ticker"])
        return [line.split()[0] for line in lines[header + 1 :] if "last decision" not in line]

    assert main(["score", "--config", cfg]) == 0
    assert first_column(capsys.readouterr().out) == ["OTHER", "TEST"]
    assert main(["score", "--ticker", "TEST", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert first_column(out) == ["TEST"] and "OTHER" not in out


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_prints_the_mlflow_ui_line_only_when_a_run_exists(
    trained_settings, capsys, monkeypatch
):
    """A training that fails before its MLflow run starts (here: splitting the rows the
    decision read fails) leaves no run to look at in the UI."""
    from pipelines import tasks

    def broken(frame, settings):
        raise RuntimeError("no split today")

    project = trained_settings.base_dir
    write_prices(project / "data" / "incoming" / "NEW.csv", price_frame(120, seed=2))
    monkeypatch.setattr(tasks, "split", broken)
    capsys.readouterr()
    assert main(["retrain", "--config", str(project / "mlflow.yaml")]) == 1
    out = capsys.readouterr().out
    assert "NEW: retrain (no model yet)" in out
    assert "NEW: FAILED: RuntimeError: no split today" in out
    assert "MLflow UI" not in out


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
    out = cli(BIN, "ingest", "prices/TEST.csv", "--ticker", "TEST", cwd=tiny_project, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == ""
    assert out.stdout.startswith("prices/TEST.csv: TEST +120 new") and out.stdout.count("\n") == 1

    def arrived() -> list:
        wanted = EventFilter(  # `until` defaults to now
            occurred=EventOccurredFilter(since=since),
            event=EventNameFilter(name=["prices.updated"]),
            resource=EventResourceFilter(id=["lstm.ticker.TEST"]),
        )
        return client.read_events(filter=wanted, limit=10).events

    deadline = time.monotonic() + 60  # the server stores events in batches
    with get_client(sync_client=True) as client:
        while not (events := arrived()):
            assert time.monotonic() < deadline, "the prices.updated event never arrived"
            time.sleep(1)
    assert [e.payload for e in events] == [{"added": 120}]


def test_ingest_with_a_prefect_api_that_does_not_answer_stores_and_says_so(tiny_project):
    """The rows are stored (exit 0); one line says the event was not sent, and why. Both
    streams to one file (`ingest ... >> log 2>&1`): the stored line comes first, as printed."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    out = subprocess.run(
        [str(BIN), "ingest", "prices/TEST.csv", "--ticker", "TEST"],
        cwd=tiny_project,
        env={**user_env(keep_pythonpath=True), "PREFECT_API_URL": url},
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


# ---------------------------------------------------------------- commands to paste, logs to read

SPACED = "my proj ü 价格"  # a folder name a shell splits, with non-ASCII letters


def test_printed_commands_paste_into_a_shell_for_a_path_with_spaces(tmp_path, capsys):
    """`init`'s `next: cd ...` and the `mlflow ui` line that `run` and `retrain` print: split as
    a shell splits them, each gives the project's own path as one argument."""
    import shlex

    from pipelines import tracking
    from pipelines.config import load_settings

    folder = tmp_path / SPACED
    assert main(["init", str(folder)]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("next: ")]
    assert shlex.split(line.removeprefix("next: "))[:3] == ["cd", str(folder.resolve()), "&&"]
    settings = load_settings(folder / "mlflow.yaml", env={})
    assert shlex.split(tracking.ui_command(settings)) == [
        *("mlflow", "ui", "--backend-store-uri", f"sqlite:///{folder.resolve() / 'mlflow.db'}"),
        *("--host", "127.0.0.1", "--port", "5000"),
    ]


@pytest.mark.slow  # the retraining flow (a training) in a subprocess
def test_retrain_into_one_log_file_says_why_before_the_training_it_starts(trained_tiny, tmp_path):
    """`retrain > log 2>&1`, as cron runs it: the file reads in the order things happened
    (the ingest and the decision before the training's progress), and its `MLflow UI:` line
    pastes into a shell for a project whose path has spaces."""
    import shlex

    from tests.pipelines.conftest import copy_of

    with copy_of(trained_tiny, tmp_path / SPACED) as settings:
        project = settings.base_dir
    write_prices(project / "data" / "incoming" / "TEST.csv", price_frame(130).iloc[120:])
    log = tmp_path / "retrain.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [str(BIN), "retrain", "--set=evaluation.backtest_folds=0"],
            cwd=project,
            env=user_env(keep_pythonpath=True),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    lines = log.read_text(encoding="utf-8").splitlines()
    assert proc.returncode == 0, lines[-30:]

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    ingested, decided = first("ingested TEST.csv: TEST +10 new"), first("TEST: retrain (gained")
    assert ingested < decided < first("TEST: 130 rows ") < first("TEST: test RMSE"), lines
    assert sum("TEST: retrain (gained" in line for line in lines) == 1, lines  # once, in order
    [ui] = [x for x in lines if x.startswith("MLflow UI: ")]
    uri = f"sqlite:///{project.resolve() / 'mlflow.db'}"
    assert shlex.split(ui.removeprefix("MLflow UI: "))[:4] == [
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
    ]


def _retrain_with_streams(project: Path, where: str) -> list[str]:
    """`retrain` in a subprocess, its stdout and stderr as `where` says: `one file`
    (`retrain > log 2>&1`), `terminal` (both on one pseudo-terminal) or `file and terminal`
    (`retrain > log` typed at a terminal). Returns the text each place received."""
    import pty
    import select
    import time

    log = project / "retrain.log"
    chunks: list[bytes] = []
    main_fd, term_fd = pty.openpty()
    try:
        with log.open("w") as file:
            proc = subprocess.Popen(
                [str(BIN), "retrain"],
                cwd=project,
                env=user_env(keep_pythonpath=True),
                stdin=subprocess.DEVNULL,
                stdout=term_fd if where == "terminal" else file,
                stderr=file if where == "one file" else term_fd,
            )
            os.close(term_fd)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if not select.select([main_fd], [], [], 1)[0]:
                    continue
                try:
                    data = os.read(main_fd, 65536)
                except OSError:  # EIO: nothing holds the terminal open any more
                    break
                if not data:
                    break
                chunks.append(data)
            returncode = proc.wait(timeout=60)
    finally:
        os.close(main_fd)
    terminal = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    text = log.read_text(encoding="utf-8")
    assert returncode == 0, (text + terminal)[-3000:]
    return {"one file": [text], "terminal": [terminal], "file and terminal": [text, terminal]}[
        where
    ]


@pytest.mark.parametrize(
    "where",
    [  # ~30 s each (a Prefect server starts): cron's case in make test-fast, all in make test
        "one file",
        pytest.param("terminal", marks=pytest.mark.slow),
        pytest.param("file and terminal", marks=pytest.mark.slow),
    ],
)
def test_retrain_shows_each_decision_once_wherever_its_streams_go(trained_tiny, tmp_path, where):
    """Each ingested file and decision is a progress line on stderr as it happens (so a log of
    both streams reads in order) and a line of the summary on stdout. When both streams go to
    one file or one terminal it is read once; stdout on its own still holds the whole summary."""
    from tests.pipelines.conftest import copy_of

    with copy_of(trained_tiny, tmp_path / "project") as settings:
        project = settings.base_dir
    write_prices(project / "data" / "incoming" / "TEST.csv", price_frame(120).iloc[-5:])
    notes = [
        "ingested TEST.csv: TEST +0 new, 0 replaced, 5 unchanged rows",
        "TEST: skip (unchanged since v1 was trained)",
        "nothing changed: no ticker to retrain",
    ]
    places = _retrain_with_streams(project, where)
    for text in places:
        assert [text.count(note) for note in notes] == [1, 1, 1], text[-3000:]
        assert sorted(notes, key=text.index) == notes, text[-3000:]
    if where == "file and terminal":  # stdout, for scripts: the summary, without progress
        summary = places[0].splitlines()
        assert [any(line.startswith(n) for n in notes) for line in summary] == [True] * 3, summary
