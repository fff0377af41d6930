"""Training refuses stored days that are not sessions of `data.calendar` (a user's test: with
`--set data.calendar=XSHG` given to `ingest` only, `run` trained and promoted Chinese prices on
New York's calendar, and forecast days on which Shenzhen was closed)."""

from __future__ import annotations

import pytest

from tests.pipelines.cli.conftest import _cli
from tests.pipelines.conftest import new_tiny_project, price_frame, trading_days, write_prices
from tests.pipelines.tuning.conftest import TUNING

XSHG = ("--set", "data.calendar=XSHG")


@pytest.mark.slow  # the CLI in subprocesses
def test_run_retrain_and_tune_refuse_prices_stored_with_another_calendar(tmp_path):
    project = new_tiny_project(tmp_path / "p")
    with (project / "mlflow.yaml").open("a", encoding="utf-8") as f:
        f.write(TUNING)  # a search space the tiny series allows
    # Shanghai/Shenzhen sessions: no 1 October week, but Thanksgiving (2019-11-28) is one
    prices = price_frame(120)
    prices["Date"] = trading_days("2019-10-08", 120, "XSHG")
    write_prices(project / "cn" / "PAB.csv", prices)
    out = _cli(project, "ingest", "cn/PAB.csv", "--ticker", "PAB")  # the project's XNYS
    assert out.returncode == 2, out.stderr
    assert "2019-11-28 (Thursday) is not a trading day of XNYS" in out.stderr
    out = _cli(project, "ingest", "cn/PAB.csv", "--ticker", "PAB", *XSHG)
    assert out.returncode == 0, out.stderr
    refused = (
        "error: PAB: stored day 2019-11-28 (Thursday) is not a session of XNYS "
        "(data.calendar): these prices were stored with another calendar; set data.calendar "
        "in mlflow.yaml to the calendar they were stored with (e.g. XSHG for Shanghai and "
        "Shenzhen shares), then train again\n"
    )
    for command in (
        ("run", "--ticker", "PAB", "--set", "evaluation.backtest_folds=0"),
        ("retrain",),
        ("tune", "--ticker", "PAB", "--trials", "1"),
    ):
        out = _cli(project, *command)
        assert (out.returncode, out.stderr[-len(refused) :]) == (2, refused), (
            command,
            out.stdout,
            out.stderr,
        )
        assert "registered" not in out.stdout, out.stdout
        # nothing registered: the project's id is made with its first registration
        assert not (project / ".lstm-project").exists(), command
        assert not (project / "data" / "forecasts").exists(), command
