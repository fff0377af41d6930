from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.store import PriceStore
from tests.pipelines.conftest import price_frame, tree_bytes, write_prices
from tests.user_path import (
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


def test_unknown_config_key_exit_2_names_key(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    assert main(["ingest", "x.csv", "--config", cfg, "--set", "training.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "training.epoch" in err and "mlflow.yaml" in err


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


def test_forecast_beyond_the_calibrated_days_is_one_line_exit_2(trained_settings):
    project = trained_settings.base_dir
    forecasts = project / "data" / "forecasts"
    before = tree_bytes(forecasts)
    # The champion's intervals are calibrated for evaluation.forecast_days = 3 days ahead.
    out = _cli(project, "forecast", "--ticker", "TEST", "--days", "300")
    assert (out.returncode, out.stdout) == (2, ""), (out.returncode, out.stdout, out.stderr)
    assert out.stderr == (
        "error: TEST: test-TEST v1: intervals are calibrated for up to 3 day(s) ahead and 300 "
        "were asked for: ask for at most 3, or raise evaluation.forecast_days and retrain\n"
    )
    assert tree_bytes(forecasts) == before


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


def test_score_with_an_unreadable_log_file_is_one_line_exit_2(trained_settings):
    project = trained_settings.base_dir
    bad = project / "data" / "forecasts" / "log" / "ticker=TEST" / "2017-11-20_v1.parquet"
    bad.write_text("garbage\n")
    for command in ("score", "status"):
        out = _cli(project, command)
        assert (out.returncode, out.stdout) == (2, ""), (command, out.returncode, out.stdout)
        [line] = out.stderr.splitlines()
        assert line.startswith(f"error: {bad}: not a readable forecast-log Parquet file"), line
