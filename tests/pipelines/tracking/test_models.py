"""The logged model: its files and code, the pyfunc round trip (same numbers in a fresh
process, bands, plain price frames, refusals) and loads from two threads."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.pipelines.conftest import price_frame
from tests.pipelines.tracking.conftest import MODEL

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_model_files_live_in_the_runs_experiment_and_artifact_folder(trained, client):
    settings, result = trained
    source = client.get_model_version(MODEL, result.version).source
    logged = client.get_logged_model(source.split("/")[-1])
    assert logged.experiment_id == client.get_run(result.run_id).info.experiment_id
    assert str(settings.path("mlartifacts")) in logged.artifact_location


def test_the_logged_model_is_named_after_its_registered_model(trained, tmp_path):
    # ut5 L8: every LoggedModel was named `model`, alike in the experiment's Models tab.
    import mlflow.artifacts
    from mlflow import MlflowClient

    from pipelines.config import resolve_tracking_uri
    from pipelines.tracking import logged_model_name

    settings, result = trained
    uri = resolve_tracking_uri(settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(settings.tracking.experiment).experiment_id
    model_id = client.get_model_version(MODEL, result.version).source.split("/")[-1]
    logged = {m.model_id: m for m in client.search_logged_models(experiment_ids=[experiment])}
    assert logged[model_id].name == MODEL
    assert logged[model_id].tags["ticker"] == "TEST"
    # the run's model loads by that name too (MLflow 3 finds runs:/<run>/<name> by name)
    local = mlflow.artifacts.download_artifacts(
        f"runs:/{result.run_id}/{MODEL}", dst_path=str(tmp_path), tracking_uri=uri
    )
    assert (Path(local) / "MLmodel").is_file()
    # what MLflow refuses in a LoggedModel's name (a dotted ticker) becomes `_`
    assert logged_model_name("lstm-000001.SZ") == "lstm-000001_SZ"


def test_model_carries_the_pyfunc_code_and_lstm_core(trained, client, tmp_path):
    """The registered model holds pipelines/pyfunc_model.py and lstm_core/ as they are here."""
    import yaml

    from pipelines import tracking

    repo = Path(tracking.__file__).resolve().parents[2]
    local = tracking.download_forecaster(MODEL, "1", tmp_path).parents[1]  # the model's root
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    code_path = Path(mlmodel["flavors"]["python_function"]["model_code_path"])
    assert code_path.resolve() == repo / "pipelines" / "pyfunc_model.py"
    assert (local / "pyfunc_model.py").read_bytes() == code_path.read_bytes()
    shipped = {p.relative_to(local / "code").as_posix() for p in (local / "code").rglob("*.py")}
    here = {p.relative_to(repo).as_posix() for p in (repo / "lstm_core").rglob("*.py")}
    assert shipped == here


def _example_forecast(client, tmp_path: Path) -> list[float]:
    """What the project itself forecasts for the champion's input example, from its files."""
    from mlflow.models import Model

    from lstm_core.predictor import Forecaster
    from pipelines import tracking

    version = client.get_model_version_by_alias(MODEL, "champion").version
    folder = tracking.download_forecaster(MODEL, version, tmp_path / "expected")
    root = folder.parents[1]  # the model's root: MLmodel and the input example
    example = Model.load(str(root)).load_input_example(str(root))
    return Forecaster.load(folder).forecast(example, 1, intervals=False)["forecast"].tolist()


@pytest.mark.slow  # the isolated process below checks the same numbers in the fast selection
def test_champion_loads_in_a_fresh_process_with_the_same_numbers(trained, client, tmp_path):
    from pipelines.config import resolve_tracking_uri

    settings, _ = trained
    expected = _example_forecast(client, tmp_path)
    code = textwrap.dedent(
        f"""
        import json, mlflow, mlflow.pyfunc, pandas as pd
        mlflow.set_tracking_uri({resolve_tracking_uri(settings)!r})
        model = mlflow.pyfunc.load_model("models:/{MODEL}@champion")
        example = model.input_example
        out = model.predict(example)
        print(json.dumps(out["forecast"].tolist()))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == pytest.approx(expected, rel=1e-6)
    assert (tmp_path / "model.keras").exists() is False  # nothing leaked into the cwd


def test_served_bands_equal_the_runs_calibration(trained, client):
    """The registered model carries the run's conformal scores: the pyfunc's bands are
    forecast * exp(+-q) with exactly the quantiles q the run logged, per level and day."""
    import mlflow.pyfunc
    import numpy as np

    _, result = trained
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{result.version}")
    example = model.input_example
    out = model.predict(example, params={"intervals": True, "days": 3})
    logged = client.get_run(result.run_id).data.metrics
    assert len(out) == 3
    for level in ("80", "95"):
        for day in range(3):
            expected = logged[f"interval_q_{level}_day{day + 1}"]
            point = out["forecast"].iloc[day]
            assert np.log(out[f"upper_{level}"].iloc[day] / point) == pytest.approx(expected)
            assert np.log(point / out[f"lower_{level}"].iloc[day]) == pytest.approx(expected)
    plain = model.predict(example, params={"days": 3})  # no bands unless asked for
    assert list(plain.columns) == ["date", "forecast"]
    np.testing.assert_allclose(plain["forecast"], out["forecast"])
    one = model.predict(example, params={"intervals": True})
    assert np.log(one["upper_80"].iloc[0] / one["forecast"].iloc[0]) == pytest.approx(
        logged["interval_q_80_day1"]
    )


def test_champion_takes_a_plain_price_frame(trained, client):
    """date + the feature columns, nothing else: extra columns, any order, ISO or datetime dates."""
    import mlflow.pyfunc
    import pandas as pd

    settings, _ = trained
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert model.metadata.get_input_schema().input_names() == ["date", "open"]
    # What a user has: a Yahoo-style download, lower-cased, 30 rows, no `amount`.
    plain = price_frame(120).rename(columns=str.lower).tail(30).reset_index(drop=True)
    expected = model.predict(plain)  # dates as ISO strings
    assert list(expected.columns) == ["date", "forecast"] and len(expected) == 1
    # a trading day, not a timestamp: MLflow's scoring server writes a date as "2020-06-17"
    day = expected["date"].iloc[0]
    assert type(day) is dt.date and day == dt.date(2020, 6, 17), repr(day)
    shuffled = plain[["volume", "close", "open", "date", "high"]].assign(note="x")
    as_datetimes = plain.assign(date=pd.to_datetime(plain["date"]))
    for frame in (shuffled, as_datetimes):
        pd.testing.assert_frame_equal(model.predict(frame), expected)

    assert _refusal(model, plain.tail(5)) == (
        "history has 5 rows, needs at least 6, one per trading day (the most recent 6 are used: "
        "lookback 5 + 1 for the log_return transform)"
    )
    # rows in any order are sorted by date; a date given twice is named with its rows
    pd.testing.assert_frame_equal(model.predict(plain.iloc[::-1]), expected)
    twice = plain.assign(date=plain["date"].where(plain.index != 5, plain["date"].iloc[4]))
    assert _refusal(model, twice) == (
        f"column 'date': {pd.Timestamp(plain['date'].iloc[4]).date()} is given more than once "
        "(rows 5, 6): one row per trading day"
    )
    with pytest.raises(Exception, match=r"missing inputs \['open'\]"):
        model.predict(plain.drop(columns=["open"]))


def _refusal(model, frame, params=None) -> str:
    """The served model's answer to a request the user must change: an MlflowException with
    error code INVALID_PARAMETER_VALUE (HTTP 400 from `mlflow models serve`), one line."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as info:
        model.predict(frame, params=params)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE", info.value.error_code
    assert len(info.value.message.splitlines()) == 1, info.value.message
    return info.value.message


def test_served_model_refuses_days_it_cannot_forecast(trained, client):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    plain = price_frame(120).rename(columns=str.lower).tail(30).reset_index(drop=True)
    for days in (0, -1):
        assert _refusal(model, plain, {"days": days}) == f"days must be >= 1, got {days}"
    # Trained with evaluation.forecast_days = 3: the bound holds with or without intervals.
    for params in (
        {"days": 10},
        {"days": 4, "intervals": False},
        {"days": 10, "intervals": True},
        {"days": 10, "intervals": True, "recalibrate": True},
    ):
        assert _refusal(model, plain, params) == (
            f"days {params['days']} is out of range: this model forecasts up to 3 day(s) ahead "
            "(the evaluation.forecast_days it was trained with): ask for 1 to 3, or raise "
            "evaluation.forecast_days and retrain"
        ), params
    assert len(model.predict(plain, params={"days": 3})) == 3


def test_served_model_takes_null_params_as_their_defaults(trained, client):
    """JSON null for a param (None through the pyfunc) is its default, never a crash."""
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    plain = price_frame(120).rename(columns=str.lower).tail(30).reset_index(drop=True)
    expected = model.predict(plain)
    for name in ("days", "intervals", "recalibrate"):
        pd.testing.assert_frame_equal(model.predict(plain, params={name: None}), expected)
    nulls = dict.fromkeys(("days", "intervals", "recalibrate"))
    pd.testing.assert_frame_equal(model.predict(plain, params=nulls), expected)
    with_bands = model.predict(plain, params={"days": 2, "intervals": True, "recalibrate": None})
    assert len(with_bands) == 2 and "lower_80" in with_bands.columns


def test_served_model_names_a_bad_date_and_its_row(trained, client):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    plain = price_frame(120).rename(columns=str.lower).tail(30).reset_index(drop=True)
    plain.loc[2, "date"] = "2017-02-30"
    assert _refusal(model, plain) == (
        "column 'date', row 3 of 30: '2017-02-30' is not an ISO date (like 2017-11-10)"
    )


def test_served_model_refuses_a_day_its_exchange_did_not_trade(trained, client):
    """A Saturday, or a closure the model carries (data.calendar XNYS: Friday 2020-07-03, after
    its data's last day), would be read as a session and shift the later days: refused like
    ingest refuses it, naming the date and its row, with or without recalibrating."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    plain = price_frame(135).rename(columns=str.lower).tail(30).reset_index(drop=True)
    assert len(model.predict(plain)) == 1  # 2020-05-27 .. 2020-07-08, XNYS sessions only
    saturday = plain.assign(date=plain["date"].where(plain.index != 5, "2020-06-06"))
    holiday = plain.assign(date=plain["date"].where(plain.index != 27, "2020-07-03"))
    for params in (None, {"days": 3, "intervals": True, "recalibrate": True}):
        assert _refusal(model, saturday, params) == (
            "column 'date': 2020-06-06 (row 6) is not a trading day (a Saturday): remove the "
            "row, as the model reads each row as the next session"
        )
        assert _refusal(model, holiday.iloc[::-1], params) == (
            "column 'date': 2020-07-03 (row 3) is not a trading day (a Friday, a holiday of the "
            "model's exchange): remove the row, as the model reads each row as the next session"
        )


@pytest.mark.slow  # a fresh interpreter that loads TensorFlow and MLflow: CI runs it
def test_champion_loads_where_the_project_cannot_be_imported(trained, client, tmp_path):
    """A fresh process without `pipelines` (or the installed lstm_core) on its sys.path."""
    from pipelines.config import resolve_tracking_uri
    from tests.isolated import isolated_command

    settings, _ = trained
    expected = _example_forecast(client, tmp_path)
    csv = tmp_path / "prices.csv"
    price_frame(132).tail(52).to_csv(csv, index=False)  # Date, Open, ... as downloaded
    code = textwrap.dedent(
        f"""
        import json, mlflow, mlflow.pyfunc, pandas as pd
        mlflow.set_tracking_uri({resolve_tracking_uri(settings)!r})
        model = mlflow.pyfunc.load_model("models:/{MODEL}@champion")
        import lstm_core  # from the model's own code folder
        out = model.predict(model.input_example)
        mine = pd.read_csv(sys.argv[1]).rename(columns=str.lower)
        later = model.predict(mine, params={{"days": 3}})  # evaluation.forecast_days
        mine = model.predict(mine.head(40))
        print(json.dumps({{"example": out["forecast"].tolist(), "core": lstm_core.__file__,
                          "mine": mine["forecast"].tolist(),
                          "dates": [day.isoformat() for day in later["date"]]}}))
        """
    )
    proc = subprocess.run(
        isolated_command(code, str(csv)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["example"] == pytest.approx(expected, rel=1e-6)
    assert "/code/lstm_core/" in got["core"], got["core"]
    assert len(got["mine"]) == 1 and got["mine"][0] > 0
    # data.calendar XNYS: the 3 trading days after Thursday 2020-07-02 skip Independence Day
    # (observed on Friday 2020-07-03); Monday to Friday alone would start on 2020-07-03.
    assert got["dates"] == ["2020-07-06", "2020-07-07", "2020-07-08"]


def test_models_loaded_from_two_threads_leave_no_mock_module_behind(trained, client, monkeypatch):
    """MLflow loads a model from code with a mock `dbutils` module swapped into sys.modules
    and back; two loads at once used to leave the mock there for good (flows load models in
    threads: tickers trained or forecast side by side)."""
    import contextlib
    import sys
    import threading
    import time

    import mlflow.models.utils as mlflow_utils

    from pipelines import tracking

    swap = mlflow_utils._mock_dbutils

    @contextlib.contextmanager
    def slow_swap(globals_dict):  # widens the window in which the two loads overlap
        with swap(globals_dict):
            time.sleep(0.5)
            yield

    monkeypatch.setattr(mlflow_utils, "_mock_dbutils", slow_swap)
    assert "dbutils" not in sys.modules
    errors: list[BaseException] = []

    def load() -> None:
        try:
            tracking.load_model(MODEL, "champion")
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    leaked = sys.modules.pop("dbutils", None)  # popped: a leak must not reach later tests
    assert leaked is None, leaked
