"""`forecast`, `score` and `status`: user errors, trading days, and forecasts that
cannot be scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines.cli import main
from tests.conftest import SHARED_DATA
from tests.pipelines.cli.conftest import BIN, _cli, project_beside
from tests.pipelines.conftest import price_frame, tree_bytes, write_prices
from tests.user_path import REPO, TINY, assert_only_progress, cli, user_env


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


def test_forecast_without_a_ticker_forecasts_every_stored_one(trained_settings, capfd):
    """No --ticker: every stored ticker; one without a champion is refused by name after the
    forecasts made are written and printed; a project with nothing stored: one line."""
    project = trained_settings.base_dir
    cfg = ["--config", str(project / "mlflow.yaml")]
    assert main(["ingest", str(project / "prices" / "TEST.csv"), "--ticker", "OTHER", *cfg]) == 0
    capfd.readouterr()
    assert main(["forecast", *cfg]) == 2
    out = capfd.readouterr()
    assert out.out.startswith("TEST: forecast written to "), out.out
    assert out.err == (
        "error: OTHER: test-OTHER has no registered version yet, so no 'champion': train one "
        "first with: lstm-pipeline run --ticker OTHER\n"
    )
    assert (project / "data" / "forecasts" / "TEST.parquet").exists()
    shutil.rmtree(trained_settings.store_path)
    assert main(["forecast", *cfg]) == 2
    assert capfd.readouterr().err == (
        f"error: no prices stored in {trained_settings.store_path}: store them first with: "
        "lstm-pipeline ingest FILE --ticker T\n"
    )


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
    out = _cli(project, "status")  # trained, but nothing to forecast with: not `ok`
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split()[-5:-3] == ["no", "champion"], out.stdout


def foreign_champion(first: Path, other: Path) -> str:
    """`forecast`'s line in project `other`, which has trained nothing, for the champion
    `first` trained (its lstm.project tag)."""
    theirs = (first / ".lstm-project").read_text().strip()
    return (
        f"error: TEST: test-TEST v1 is another project's model: its lstm.project tag is {theirs}, "
        f"this project's id is not made yet ({other / '.lstm-project'}): give this project "
        'model names of its own with registry.model_name (e.g. "myproject-{ticker}") and train '
        "them: lstm-pipeline run --ticker TEST\n"
    )


# The same for a champion registered before projects had ids: judged by its training data.
UNTAGGED_FOREIGN = (
    "error: TEST: test-TEST v1 was trained on 120 rows through 2020-06-16, not on the 120 "
    "rows of TEST stored here through that day: it is not this project's model (another "
    "project's on the same tracking server, or stored days replaced since): give this "
    'project model names of its own with registry.model_name (e.g. "myproject-{ticker}") '
    "and train them: lstm-pipeline run --ticker TEST; or, if v1 is this project's own, "
    "promote by hand a version trained here (one does not challenge it): lstm-pipeline "
    "promote --ticker TEST --version N\n"
)


def _second_project(first: Path, other: Path) -> Path:
    """A project sharing `first`'s tracking store (as a server would be shared; a SQLite file
    suffices), with TEST prices of its own (to ingest): `first`'s champion has its model name."""
    project_beside(first, other)
    write_prices(other / "prices" / "TEST.csv", price_frame(120, seed=7))
    return other


@pytest.mark.usefixtures("prefect_harness")
def test_forecast_refuses_another_projects_champion_of_the_same_name(
    trained_settings, tmp_path, capsys
):
    """A user's test: two projects on one tracking server, the same ticker, so the same
    registered model name: the second forecast with the first's champion (other prices,
    another exchange's sessions) and said nothing."""
    from pipelines import tracking

    first = trained_settings.base_dir
    other = _second_project(first, tmp_path / "other")
    cfg = str(other / "mlflow.yaml")
    assert main(["ingest", str(other / "prices" / "TEST.csv"), "--config", cfg]) == 0
    capsys.readouterr()
    before = tree_bytes(other), tree_bytes(first / "data")
    assert main(["forecast", "--ticker", "TEST", "--config", cfg]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == foreign_champion(first, other)
    # the project it was trained in, but told another calendar than it was trained with: its
    # own champion, which a version trained with that calendar challenges
    own = str(first / "mlflow.yaml")
    xshg = ["--set", "data.calendar=XSHG"]
    assert main(["forecast", "--ticker", "TEST", "--config", own, *xshg]) == 2
    calendar = (
        "error: TEST: test-TEST v1 was trained on these prices with data.calendar XNYS, this "
        "project's is XSHG: its forecasts would fall on XNYS sessions: forecast with the "
        "calendar it was trained with (data.calendar: XNYS in mlflow.yaml, or --set "
        "data.calendar=XNYS), or train it again with XSHG"
    )
    assert capsys.readouterr().err == f"{calendar}: lstm-pipeline run --ticker TEST\n"
    assert (tree_bytes(other), tree_bytes(first / "data")) == before
    # v1 as a version registered before projects had ids: judged by what it was trained on
    tracking.connect(trained_settings)
    tracking.tag_version("test-TEST", "1", {tracking.TAG_PROJECT: None})
    assert main(["forecast", "--ticker", "TEST", "--config", cfg]) == 2
    assert capsys.readouterr().err == UNTAGGED_FOREIGN
    # another exchange: the champion would date its forecasts on New York's sessions
    assert main(["forecast", "--ticker", "TEST", "--config", cfg, *xshg]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "error: TEST: test-TEST v1 was trained on 120 rows through 2020-06-16 (data.calendar "
        "XNYS), not on the 120 rows of TEST stored here through that day (data.calendar XSHG): "
        "it is not this project's model"
    ), line
    assert (tree_bytes(other), tree_bytes(first / "data")) == before
    # status says so in the ticker's row and a line below the table
    assert main(["status", "--config", cfg]) == 0
    header, row, *below = capsys.readouterr().out.splitlines()
    assert row.split()[-4] == "FOREIGN", row
    assert below[0].startswith("TEST: test-TEST v1 was trained on 120 rows"), below
    # untagged, its own project's champion could be another's: one trained here does not
    # challenge it
    assert main(["forecast", "--ticker", "TEST", "--config", own, *xshg]) == 2
    assert capsys.readouterr().err == (
        f"{calendar} and promote that version by hand (one trained here does not challenge "
        "it): lstm-pipeline run --ticker TEST, then lstm-pipeline promote --ticker TEST "
        "--version N\n"
    )
    assert (tree_bytes(other), tree_bytes(first / "data")) == before
    # and as it was trained: it forecasts with it as before, and its status is ok
    assert main(["forecast", "--ticker", "TEST", "--config", own]) == 0
    capsys.readouterr()
    assert main(["status", "--config", own]) == 0
    header, row, *below = capsys.readouterr().out.splitlines()
    assert row.split()[-4] == "ok", row
    assert not [x for x in below if x.startswith("TEST: test-TEST")], below


@pytest.mark.slow  # the CLI in a subprocess
def test_forecast_of_another_projects_champion_as_the_user_runs_it(trained_settings, tmp_path):
    """The installed command from the second project's folder: the one line, exit 2, no
    traceback, and no forecast written in either project."""
    first = trained_settings.base_dir
    other = _second_project(first, tmp_path / "other")
    out = _cli(other, "ingest", "prices/TEST.csv")
    assert out.returncode == 0, out.stderr
    before = tree_bytes(other / "data"), tree_bytes(first / "data")
    out = _cli(other, "forecast", "--ticker", "TEST")
    assert (out.returncode, out.stdout) == (2, ""), (out.returncode, out.stdout, out.stderr)
    assert out.stderr == foreign_champion(first, other)
    assert not (other / "data" / "forecasts").exists()
    assert (tree_bytes(other / "data"), tree_bytes(first / "data")) == before


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


@pytest.mark.usefixtures("prefect_harness")
def test_forecast_promote_and_rollback_of_a_ticker_typed_in_another_case_name_it(
    trained_settings, capsys
):
    """`forecast --ticker test` with TEST stored and trained: the stored name, as `run` and
    `score` say it, not a way out (`run --ticker test`) that fails in turn."""
    cfg = str(trained_settings.base_dir / "mlflow.yaml")
    stored = sorted(p.name for p in trained_settings.store_path.iterdir())
    assert main(["forecast", "--ticker", "test", "--config", cfg]) == 2
    assert capsys.readouterr().err == (
        "error: test: test-test has no registered version yet, so no 'champion': tickers are "
        "case-sensitive, and 'TEST' is stored\n"
    )
    for command in (["promote", "--version", "1"], ["rollback"]):
        assert main([*command, "--ticker", "test", "--config", cfg]) == 2
        assert capsys.readouterr().err == (
            "error: no registered model 'test-test' (ticker 'test'): tickers are "
            "case-sensitive, and 'TEST' is stored\n"
        ), command
    assert sorted(p.name for p in trained_settings.store_path.iterdir()) == stored


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


@pytest.mark.slow  # the CLI in a subprocess: CI runs it
def test_score_without_a_prefect_server_does_not_claim_the_degraded_event_was_heard(
    trained_settings,
):
    """A user's test: `score` said `emitted model.degraded` with no PREFECT_API_URL; the
    event went to the command's own temporary API, which stopped with it."""
    project = trained_settings.base_dir
    # the days the champion's logged forecasts (made on the last stored day) are for
    later = write_prices(project / "later" / "TEST.csv", price_frame(125).iloc[120:])
    assert main(["ingest", str(later), "--config", str(project / "mlflow.yaml")]) == 0
    strict = ["--set=monitoring.min_days=1", "--set=monitoring.max_live_ratio=0.0001"]
    out = _cli(project, "score", *strict)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[0] == (
        "TEST: champion v1 degraded; no Prefect server to receive model.degraded (set "
        "PREFECT_API_URL); retrain it with: lstm-pipeline retrain"
    ), out.stdout
    assert "emitted" not in out.stdout


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
    # stored, never trained: said so, not `ok` (as if its model were fine), no `- since -`
    assert [row.split()[1:3] for row in rows] == [["-", "-"]] * 2, out.stdout
    assert [row.split()[-4] for row in rows] == ["untrained"] * 2, out.stdout


def test_status_of_chosen_tickers(tiny_project, capsys):
    """`status --ticker T`: T's row alone; a ticker not stored: one line, exit 2."""
    cfg = ["--config", str(tiny_project / "mlflow.yaml")]
    src = str(tiny_project / "prices" / "TEST.csv")
    for ticker in ("OTHER", "TEST"):
        assert main(["ingest", src, "--ticker", ticker, *cfg]) == 0
    capsys.readouterr()
    assert main(["status", "--ticker", "TEST", *cfg]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows] == ["TEST"], rows
    assert main(["status", "--json", "--ticker", "OTHER", "--ticker", "TEST", *cfg]) == 0
    assert [r["ticker"] for r in json.loads(capsys.readouterr().out)] == ["OTHER", "TEST"]
    assert main(["status", "--ticker", "test", *cfg]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no prices stored for ticker 'test' in "), err
    assert "'TEST' is stored" in err, err


# ---------------------------------------------------------------- trading days


SHARED_PING_AN = SHARED_DATA / "平安银行.csv"


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
        "prices come from (XSHG for Shanghai and Shenzhen shares, as this export's are)\n"
    )
    assert not (project / "data" / "store" / "ticker=PAB").exists()
    xshg = "--set=data.calendar=XSHG"
    out = cli(BIN, "ingest", str(SHARED_PING_AN), "--ticker", "PAB", xshg, cwd=project, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    settings = [*TINY, "--set=evaluation.backtest_folds=0", xshg]
    out = cli(BIN, "run", "--ticker", "PAB", *settings, cwd=project, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    # forecast without the calendar it was trained with: its days would be Shenzhen's, the
    # project says New York's (scoring would match them by New York's sessions)
    before = tree_bytes(project / "data" / "forecasts")  # run's forecast, made with XSHG
    out = cli(BIN, "forecast", "--ticker", "PAB", cwd=project, env=env, timeout=300)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr[-2000:]
    assert out.stderr.startswith(
        "error: PAB: lstm-PAB v1 was trained on these prices with data.calendar XSHG, this "
        "project's is XNYS: its forecasts would fall on XSHG sessions"
    ), out.stderr[-2000:]
    assert tree_bytes(project / "data" / "forecasts") == before
    out = cli(BIN, "forecast", "--ticker", "PAB", xshg, cwd=project, env=env, timeout=300)
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
    assert (
        "MSFT: 5 forecasts not scored: a day up to their target is missing from the store "
        "(2017-10-16)"
    ) in out.stdout
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


@pytest.mark.slow  # the CLI in subprocesses: CI runs it
def test_a_configured_prefect_api_that_does_not_answer_is_one_line_exit_2(tiny_project):
    """A user's test (ut5 P1): PREFECT_API_URL left exported after its server stopped made
    every flow command end in Prefect's traceback after 30-40 s of retries."""
    import socket
    import time

    from mlflow import MlflowClient

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    cfg = str(tiny_project / "mlflow.yaml")
    assert main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg]) == 0
    env = {**user_env(keep_pythonpath=True), "PREFECT_API_URL": url}
    for command in (["forecast", "--ticker", "TEST"], ["score"]):
        started = time.monotonic()
        out = cli(BIN, *command, cwd=tiny_project, env=env, timeout=300)
        took = time.monotonic() - started
        assert (out.returncode, out.stdout) == (2, ""), (command, out.returncode, out.stderr)
        assert out.stderr.splitlines() == [
            f"error: Prefect API {url} does not answer (connection refused): start it (prefect "
            "server start --host 127.0.0.1), or unset PREFECT_API_URL (and "
            "runtime.prefect_api_url) to run with a temporary local API"
        ], command
        assert took < 20, (command, took)  # not Prefect's retries
    assert not (tiny_project / "data" / "forecasts").exists()
    client = MlflowClient(f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []  # no run started


@pytest.mark.slow  # the CLI in subprocesses, or trainings: CI runs it
def test_forecast_with_a_model_that_predates_recalibration(trained_settings, tmp_path, monkeypatch):
    """A champion logged by an older version: a pyfunc whose `predict` has no type hints and
    whose signature has no `recalibrate` param. `forecast` asks it only for the params it
    declares (no MLflow warning), says in one line that its bands are its run's own, and
    MLflow's type-hint advice stays off the console."""
    from lstm_core.predictor import Forecaster
    from pipelines import tracking
    from pipelines.store import PriceStore, as_frame
    from pipelines.tracking import models

    project = trained_settings.base_dir
    tracking.connect(trained_settings)
    v1 = tracking.get_version("test-TEST", "1")
    forecaster = Forecaster.load(tracking.download_forecaster("test-TEST", "1", tmp_path / "dl"))
    old_code = tmp_path / "old_pyfunc_model.py"
    text = models.PYFUNC_CODE.read_text(encoding="utf-8")
    assert "model_input: pd.DataFrame" in text
    old_code.write_text(text.replace("model_input: pd.DataFrame", "model_input"), "utf-8")
    monkeypatch.setattr(models, "PYFUNC_CODE", old_code)
    narrower = {k: v for k, v in models.REQUEST_PARAMS.items() if k != "recalibrate"}
    monkeypatch.setattr(models, "REQUEST_PARAMS", narrower)
    example = as_frame(PriceStore(trained_settings.store_path).read_table("TEST")).tail(40)
    uri = tracking.log_forecaster(
        v1.run_id, forecaster, tmp_path / "fc", example, name="test-TEST", ticker="TEST"
    )
    v2 = tracking.register("test-TEST", uri, v1.run_id, v1.tags)
    tracking.set_alias("test-TEST", "champion", v2.version)

    out = _cli(project, "forecast", "--ticker", "TEST")
    assert out.returncode == 0, out.stderr
    assert "Unrecognized params" not in out.stderr
    assert_only_progress(out)  # also: no "type hints"
    assert (
        "TEST: test-TEST v2 predates re-calibrated bands: its bands are its run's own "
        "(retrain for re-calibrated ones)"
    ) in out.stderr
    assert "test-TEST v2" in out.stdout


def test_status_does_not_repeat_a_promotions_reason(trained_settings, capfd):
    """A promotion by hand recorded by an older version ("manual promotion: manual promotion",
    its `--reason` default after the prefix): `status` says it once; so does a promotion made
    now with that reason."""
    from pipelines import tracking
    from pipelines.promotion import manual_promote

    project = trained_settings.base_dir
    tracking.connect(trained_settings)
    old = {
        tracking.TAG_PROMOTED: "true",
        tracking.TAG_REASON: "manual promotion: manual promotion",
        "promotion.decided_at": "2020-01-01T00:00:00.000000Z",
    }
    tracking.tag_version("test-TEST", "1", old)
    config = ["--config", str(project / "mlflow.yaml")]
    assert main(["status", *config]) == 0
    out = capfd.readouterr().out
    assert "TEST last decision: v1 promoted: manual promotion\n" in out, out
    assert main(["status", "--json", *config]) == 0
    [row] = json.loads(capfd.readouterr().out)
    assert row["last_decision"] == "v1 promoted: manual promotion"

    from mlflow import MlflowClient

    v1 = tracking.get_version("test-TEST", "1")
    source = MlflowClient().get_model_version("test-TEST", "1").source  # models:/m-<id>
    tracking.register("test-TEST", source, v1.run_id, v1.tags)
    manual_promote(trained_settings, "TEST", "2", "manual promotion")
    assert tracking.get_version("test-TEST", "2").tags[tracking.TAG_REASON] == "manual promotion"
    assert main(["status", "--json", *config]) == 0
    [row] = json.loads(capfd.readouterr().out)
    assert row["last_decision"] == "v2 promoted: manual promotion"


@pytest.mark.slow  # the CLI in subprocesses, or trainings: CI runs it
def test_score_counts_forecasts_shifted_by_an_earlier_missing_day_truthfully(trained_settings):
    """A day skipped (2020-06-18) leaves unscored the forecasts for it and those for stored
    days after it (their positions shift): `score` says a day up to their target is missing
    and names it, rather than "their days are missing"."""
    import re

    from pipelines.monitoring import forecast_log

    project = trained_settings.base_dir
    config = ["--config", str(project / "mlflow.yaml")]
    frame = price_frame(130)  # the store holds its first 120 days, through 2020-06-16
    write_prices(project / "a" / "TEST.csv", frame.iloc[120:121])  # 06-17
    write_prices(project / "b" / "TEST.csv", frame.iloc[122:125])  # 06-19..06-23: 06-18 skipped
    assert main(["ingest", str(project / "a" / "TEST.csv"), *config]) == 0
    out = _cli(project, "forecast", "--ticker", "TEST")  # made on 06-17: 06-18, 06-19, 06-22
    assert out.returncode == 0, out.stderr
    assert main(["ingest", str(project / "b" / "TEST.csv"), *config]) == 0
    out = _cli(project, "score")
    assert out.returncode == 0, out.stderr
    log = forecast_log(trained_settings).read("TEST")
    made = log[log["made_on"] == "2020-06-17"]
    # a forecast for a day that is stored, 06-19, is among those not scored
    assert "2020-06-19" in set(made["expected_date"].astype(str))
    line = re.search(
        r"^TEST: (\d+) forecasts not scored: a day up to their target is missing from the "
        r"store \(2020-06-18\)$",
        out.stdout,
        re.MULTILINE,
    )
    assert line, out.stdout
    status = _cli(project, "status", "--json")
    [row] = json.loads(status.stdout)
    assert row["first_missing_day"] == "2020-06-18"
    assert row["not_scored"] == int(line.group(1)) >= 4  # 06-18, 06-19, 06-22 of 06-17's
