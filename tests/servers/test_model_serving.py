"""`mlflow models serve` on the champion answers /invocations like the in-process model."""

from __future__ import annotations

import json
import urllib.request

import pandas as pd
import pytest

from pipelines.servers import start_model_server
from tests.servers.conftest import MODEL_NAME, TICKER

pytestmark = pytest.mark.servers

URI = f"models:/{MODEL_NAME}@champion"


def _post(server, body: dict) -> urllib.request.Request:
    """A JSON POST to the model server's /invocations."""
    return urllib.request.Request(
        f"{server.url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )


@pytest.fixture(scope="module")
def model_server(trained, mlflow_server, tmp_path_factory):
    server = start_model_server(
        URI, mlflow_server.url, tmp_path_factory.mktemp("model-server"), timeout=240
    )
    yield server
    server.stop()


def test_invocations_match_in_process_predict(trained, mlflow_server, model_server):
    import mlflow

    from pipelines.store import PriceStore

    settings, _ = trained
    # `trained` pointed this process at the server for the session.
    assert mlflow.get_tracking_uri() == mlflow_server.url
    model = mlflow.pyfunc.load_model(URI)
    columns = model.metadata.get_input_schema().input_names()
    assert columns == ["date", *settings.features.columns]
    recent = PriceStore(settings.store_path).load(TICKER).tail(30)[columns].reset_index(drop=True)
    expected = pd.DataFrame(model.predict(recent))

    # What a client has: JSON dates as ISO strings, more columns than the model reads, in its
    # own order (a Yahoo-style frame with no `amount`).
    stored = PriceStore(settings.store_path).load(TICKER).tail(30).reset_index(drop=True)
    payload = stored[["volume", "close", "high", "low", "open", "date"]].assign(
        date=pd.to_datetime(stored["date"]).dt.strftime("%Y-%m-%d")
    )
    body = {"dataframe_split": payload.to_dict(orient="split", index=False)}
    with urllib.request.urlopen(_post(model_server, body), timeout=120) as resp:
        assert resp.status == 200
        payload = json.loads(resp.read())
    served = pd.DataFrame(payload["predictions"])
    assert len(served) == len(expected)
    # the forecast's trading day as a date: "2017-10-16" (datetime.date in process), no time
    assert served["date"].tolist() == [day.isoformat() for day in expected["date"]]
    assert all(len(day) == len("2017-10-16") for day in served["date"]), served["date"]
    numeric = expected.select_dtypes("number").columns
    assert len(numeric), expected.dtypes
    for col in numeric:
        assert served[col].to_numpy() == pytest.approx(expected[col].to_numpy(), rel=1e-5), col


def test_served_intervals_match_in_process_bands(trained, mlflow_server, model_server):
    """`params: {"intervals": true, "days": 3}` through the server gives the pyfunc's bands."""
    import mlflow

    from pipelines.store import PriceStore

    settings, _ = trained
    model = mlflow.pyfunc.load_model(URI)
    columns = model.metadata.get_input_schema().input_names()
    recent = PriceStore(settings.store_path).load(TICKER).tail(30)[columns].reset_index(drop=True)
    params = {"intervals": True, "days": 3}
    expected = pd.DataFrame(model.predict(recent, params=params))
    assert {"lower_80", "upper_80", "lower_95", "upper_95"} <= set(expected.columns)

    payload = recent.assign(date=pd.to_datetime(recent["date"]).dt.strftime("%Y-%m-%d"))
    body = {"dataframe_split": payload.to_dict(orient="split", index=False), "params": params}
    with urllib.request.urlopen(_post(model_server, body), timeout=120) as resp:
        served = pd.DataFrame(json.loads(resp.read())["predictions"])
    assert len(served) == 3
    for col in ("forecast", "lower_80", "upper_80", "lower_95", "upper_95"):
        assert served[col].to_numpy() == pytest.approx(expected[col].to_numpy(), rel=1e-5), col


def test_invocations_with_too_few_rows_say_how_many_are_needed(trained, model_server):
    import urllib.error

    settings, _ = trained
    need = settings.features.lookback + 1  # + 1 for log returns
    frame = {"columns": ["date", "open"], "data": [["2020-01-01", 1.0]] * 1}
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(_post(model_server, {"dataframe_split": frame}), timeout=120)
    message = json.loads(err.value.read())["message"]
    assert f"history has 1 rows, needs at least {need}" in message, message


def test_served_days_are_bounded_with_or_without_intervals_and_null_is_a_default(
    trained, model_server
):
    """Trained with evaluation.forecast_days = 3: 4 days is a 400 with one sentence, bands or
    not; a param sent as JSON null is its default (one day, no bands), not a stack trace."""
    import urllib.error

    from pipelines.store import PriceStore

    settings, _ = trained
    recent = PriceStore(settings.store_path).load(TICKER).tail(30).reset_index(drop=True)
    recent = recent[["date", *settings.features.columns]].assign(
        date=pd.to_datetime(recent["date"]).dt.strftime("%Y-%m-%d")
    )

    def post(params: dict) -> urllib.request.Request:
        body = {"dataframe_split": recent.to_dict(orient="split", index=False), "params": params}
        return _post(model_server, body)

    for params in ({"days": 4}, {"days": 4, "intervals": True}):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(post(params), timeout=120)
        assert err.value.code == 400, params
        message = json.loads(err.value.read())["message"]  # MLflow adds the input before it
        assert message.endswith(
            "days 4 is out of range: this model forecasts up to 3 day(s) ahead (the "
            "evaluation.forecast_days it was trained with): ask for 1 to 3, or raise "
            "evaluation.forecast_days and retrain"
        ), (params, message)
    nulls = dict.fromkeys(("days", "intervals", "recalibrate"))
    with urllib.request.urlopen(post(nulls), timeout=120) as resp:
        assert resp.status == 200
        served = pd.DataFrame(json.loads(resp.read())["predictions"])
    assert list(served.columns) == ["date", "forecast"] and len(served) == 1


def test_served_model_over_http_refuses_a_day_its_exchange_did_not_trade(trained, model_server):
    """A Saturday among the rows (read as the next session, it would shift the later days):
    HTTP 400 naming the date and its row; the same rows on trading days only still answer."""
    import urllib.error

    from pipelines.store import PriceStore

    settings, _ = trained
    recent = PriceStore(settings.store_path).load(TICKER).tail(30).reset_index(drop=True)
    recent = recent[["date", *settings.features.columns]]
    days = pd.to_datetime(recent["date"])
    saturday = days[4] + pd.offsets.Week(weekday=5)  # after row 5's day, before the last row's
    assert days[0] < saturday < days.iloc[-1] and saturday.dayofweek == 5
    weekdays = recent.assign(date=days.dt.strftime("%Y-%m-%d"))
    with_saturday = weekdays.assign(
        date=weekdays["date"].where(weekdays.index != 5, f"{saturday:%Y-%m-%d}")
    )

    with pytest.raises(urllib.error.HTTPError) as err:
        body = {"dataframe_split": with_saturday.to_dict(orient="split", index=False)}
        urllib.request.urlopen(_post(model_server, body), timeout=120)
    assert err.value.code == 400
    message = json.loads(err.value.read())["message"]  # MLflow adds the input before it
    assert message.endswith(
        f"column 'date': {saturday:%Y-%m-%d} (row 6) is not a trading day (a Saturday): remove "
        "the row, as the model reads each row as the next session"
    ), message

    body = {"dataframe_split": weekdays.to_dict(orient="split", index=False)}
    with urllib.request.urlopen(_post(model_server, body), timeout=120) as resp:
        assert resp.status == 200
        assert len(json.loads(resp.read())["predictions"]) == 1


def test_served_model_over_http_names_a_bad_price_or_time_by_its_row_and_drops_unknown_params(
    trained, model_server
):
    """HTTP 400 naming the column and row (as given) of a missing price (JSON null), a price of
    0 or below (log returns: no mention of a volume the model does not read) and a date with a
    time of day; an unknown param never reaches the model (MLflow drops it): a 200 as if unsent."""
    import urllib.error

    from pipelines.store import PriceStore

    settings, _ = trained
    assert "open" in settings.features.columns and "volume" not in settings.features.columns
    recent = PriceStore(settings.store_path).load(TICKER).tail(30).reset_index(drop=True)
    recent = recent[["date", *settings.features.columns]].assign(
        date=pd.to_datetime(recent["date"]).dt.strftime("%Y-%m-%d")
    )
    day = recent["date"].iloc[-1]

    def message(frame: pd.DataFrame) -> str:
        body = {"dataframe_split": frame.to_dict(orient="split", index=False)}
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(_post(model_server, body), timeout=120)
        assert err.value.code == 400
        return json.loads(err.value.read())["message"]  # MLflow adds the input before it

    missing = recent.astype({"open": object})
    missing.loc[29, "open"] = None  # JSON null
    assert message(missing).endswith("column 'open', row 30 of 30: nan is not a finite number")
    for value in (0.0, -5.0):
        low = recent.assign(open=recent["open"].where(recent.index != 4, value))
        assert message(low).endswith(
            f"column 'open', row 5 of 30: {value} is not positive (the model reads log returns)"
        )
    timed = recent.assign(date=recent["date"].where(recent.index != 29, f"{day} 15:30"))
    assert message(timed).endswith(
        f"column 'date', row 30 of 30: '{day} 15:30' is not an ISO date (like 2017-11-10): the "
        "model reads days, not times of day"
    )

    body = {"dataframe_split": recent.to_dict(orient="split", index=False)}
    with urllib.request.urlopen(_post(model_server, body), timeout=120) as resp:
        default = json.loads(resp.read())["predictions"]
    unknown = {**body, "params": {"horizon": 3}}
    with urllib.request.urlopen(_post(model_server, unknown), timeout=120) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["predictions"] == default and len(default) == 1
