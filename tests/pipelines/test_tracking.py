"""MLflow: what a training run logs, the pyfunc round trip, and promotion by alias."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.pipelines.conftest import copy_of, price_frame

pytestmark = pytest.mark.usefixtures("prefect_harness")
MODEL = "test-TEST"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trained_tiny):
    """This module's copy of the session's tiny training run (the last test here registers
    and promotes more versions)."""
    with copy_of(trained_tiny, tmp_path_factory.mktemp("tracking") / "project") as settings:
        yield settings, trained_tiny.summary.results[0]


@pytest.fixture
def client(trained):
    from mlflow import MlflowClient

    from pipelines import tracking

    tracking.connect(trained[0])
    return MlflowClient()


def test_run_logs_flat_params_metrics_and_epoch_curves(trained, client):
    settings, result = trained
    run = client.get_run(result.run_id)
    params = run.data.params
    assert params["features.lookback"] == "5"
    assert params["model.units"] == "4"
    assert params["registry.model_name"] == "test-{ticker}"
    assert set(params) == set(settings.flat())  # every configuration value, flat
    metrics = run.data.metrics
    for key in (
        "test_rmse",
        "naive_rmse",
        "drift_rmse",
        "ma_rmse",
        "skill_vs_naive",
        "mase",
        "dm_stat",
        "dm_pvalue",
        "interval_coverage_80",
        "interval_coverage_95",
        "interval_width_80",
        "interval_score_95",
        "naive_interval_coverage_80",
        "naive_interval_width_95",
        "interval_q_80_day3",
        "test_directional_accuracy",
    ):
        assert key in metrics, key
    assert metrics["skill_vs_naive"] == pytest.approx(
        1 - metrics["test_rmse"] / metrics["naive_rmse"]
    )
    history = client.get_metric_history(result.run_id, "train_loss")
    assert [m.step for m in history] == list(range(settings.training.epochs))
    assert client.get_metric_history(result.run_id, "val_loss")
    assert run.info.status == "FINISHED"
    assert "TEST" in run.info.run_name


def test_run_logs_figures_dataset_and_lineage_tags(trained, client):
    _, result = trained
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/test_predictions.png", "plots/loss.png", "plots/residuals.png"} <= plots
    run = client.get_run(result.run_id)
    [ds] = run.inputs.dataset_inputs
    assert ds.dataset.digest and "TEST" in ds.dataset.name
    assert "ticker=TEST" in ds.dataset.source
    tags = run.data.tags
    assert tags["ticker"] == "TEST"
    assert tags["data.last_date"] == str(price_frame(120)["Date"].iloc[-1])
    assert tags["data.rows"] == "120"
    assert "lib.tensorflow" in tags and "lib.mlflow" in tags


def test_model_files_live_in_the_runs_experiment_and_artifact_folder(trained, client):
    settings, result = trained
    source = client.get_model_version(MODEL, result.version).source
    logged = client.get_logged_model(source.split("/")[-1])
    assert logged.experiment_id == client.get_run(result.run_id).info.experiment_id
    assert str(settings.path("mlartifacts")) in logged.artifact_location


@pytest.mark.slow  # the isolated process below checks the same numbers in the fast selection
def test_champion_loads_in_a_fresh_process_with_the_same_numbers(trained, client, tmp_path):
    from pipelines import tracking

    settings, result = trained
    local = client.download_artifacts(result.run_id, "model_check", str(tmp_path))
    expected = json.loads((Path(local) / "input_example_forecast.json").read_text())
    code = textwrap.dedent(
        f"""
        import json, mlflow, mlflow.pyfunc, pandas as pd
        mlflow.set_tracking_uri({tracking.resolve_tracking_uri(settings)!r})
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
    assert got == pytest.approx(expected["forecast"]["forecast"], rel=1e-6)
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
    assert expected["date"].iloc[0] == pd.Timestamp("2020-06-17")
    shuffled = plain[["volume", "close", "open", "date", "high"]].assign(note="x")
    as_datetimes = plain.assign(date=pd.to_datetime(plain["date"]))
    for frame in (shuffled, as_datetimes):
        pd.testing.assert_frame_equal(model.predict(frame), expected)

    need = 5 + 1  # lookback + 1 for log returns
    with pytest.raises(Exception, match=f"history has {need - 1} rows, needs at least {need}"):
        model.predict(plain.tail(need - 1))
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
    for name in ("days", "intervals", "samples", "seed", "recalibrate"):
        pd.testing.assert_frame_equal(model.predict(plain, params={name: None}), expected)
    nulls = dict.fromkeys(("days", "intervals", "samples", "seed", "recalibrate"))
    pd.testing.assert_frame_equal(model.predict(plain, params=nulls), expected)
    with_bands = model.predict(plain, params={"days": 2, "intervals": True, "seed": None})
    assert len(with_bands) == 2 and "lower_80" in with_bands.columns
    for name in ("samples", "seed"):
        assert _refusal(model, plain, {name: -1}) == f"{name} must be >= 0, got -1"


def test_served_model_names_a_bad_date_and_its_row(trained, client):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    plain = price_frame(120).rename(columns=str.lower).tail(30).reset_index(drop=True)
    plain.loc[2, "date"] = "2017-02-30"
    assert _refusal(model, plain) == (
        "column 'date', row 3 of 30: '2017-02-30' is not an ISO date (like 2017-11-10)"
    )


@pytest.mark.slow  # a fresh interpreter that loads TensorFlow and MLflow: CI runs it
def test_champion_loads_where_the_project_cannot_be_imported(trained, client, tmp_path):
    """A fresh process without `pipelines` (or the installed lstm_core) on its sys.path."""
    from pipelines import tracking
    from tests.isolated import isolated_command

    settings, result = trained
    local = client.download_artifacts(result.run_id, "model_check", str(tmp_path))
    expected = json.loads((Path(local) / "input_example_forecast.json").read_text())
    csv = tmp_path / "prices.csv"
    price_frame(132).tail(52).to_csv(csv, index=False)  # Date, Open, ... as downloaded
    code = textwrap.dedent(
        f"""
        import json, mlflow, mlflow.pyfunc, pandas as pd
        mlflow.set_tracking_uri({tracking.resolve_tracking_uri(settings)!r})
        model = mlflow.pyfunc.load_model("models:/{MODEL}@champion")
        import lstm_core  # from the model's own code folder
        out = model.predict(model.input_example)
        mine = pd.read_csv(sys.argv[1]).rename(columns=str.lower)
        later = model.predict(mine, params={{"days": 3}})  # evaluation.forecast_days
        mine = model.predict(mine.head(40))
        print(json.dumps({{"example": out["forecast"].tolist(), "core": lstm_core.__file__,
                          "mine": mine["forecast"].tolist(),
                          "dates": later["date"].dt.strftime("%Y-%m-%d").tolist()}}))
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
    assert got["example"] == pytest.approx(expected["forecast"]["forecast"], rel=1e-6)
    assert "/code/lstm_core/" in got["core"], got["core"]
    assert len(got["mine"]) == 1 and got["mine"][0] > 0
    # data.calendar XNYS: the 3 trading days after Thursday 2020-07-02 skip Independence Day
    # (observed on Friday 2020-07-03); Monday to Friday alone would start on 2020-07-03.
    assert got["dates"] == ["2020-07-06", "2020-07-07", "2020-07-08"]


def test_promotion_by_alias_refusal_manual_promote_and_rollback(trained, client, tmp_path):
    from pipelines import tracking
    from pipelines.flows import promote
    from pipelines.promotion import manual_promote, rollback
    from pipelines.store import PriceStore

    settings, result = trained
    assert tracking.champion(MODEL, "champion").version == "1"
    v1 = tracking.get_version(MODEL, "1")
    assert v1.tags[tracking.TAG_PROMOTED] == "true"
    assert "first model" in v1.tags[tracking.TAG_REASON]
    # What the registered model forecasts, and why v1 is champion, as a fresh client sees them.
    about = client.get_registered_model(MODEL).description
    for part in ("TEST", "daily open price", "1 trading day ahead", "last 5 days", "log_return"):
        assert part in about, (part, about)
    text = client.get_model_version(MODEL, "1").description
    run = client.get_run(result.run_id).data.metrics
    assert text.startswith(f"Promoted to champion: test_rmse {run['test_rmse']:.6g} with no ")
    assert "with no champion to compare" in text and f"RMSE {run['naive_rmse']:.6g}" in text

    frame = PriceStore(settings.store_path).load("TEST")
    dates = frame["date"].iloc[-10:].to_numpy()
    source = client.get_model_version(MODEL, "1").source

    def challenger(rmse: float) -> str:
        mv = tracking.register(MODEL, source, result.run_id, {"ticker": "TEST"})
        metrics = {"test_rmse": rmse, "naive_rmse": 1e9}
        promote.fn(settings, "TEST", mv.version, metrics, frame, dates, 50, tmp_path)
        return mv.version

    better = challenger(1e-9)
    assert tracking.champion(MODEL, "champion").version == better == "2"
    tags = tracking.get_version(MODEL, "2").tags
    assert tags[tracking.TAG_PROMOTED] == "true" and "beats champion" in tags[tracking.TAG_REASON]
    assert tracking.get_version(MODEL, "1").tags[tracking.TAG_REPLACED_BY] == "2"
    # The UI's Description column: the decision in one sentence with the scores it compared.
    v1_score = float(tracking.get_version(MODEL, "2").tags["promotion.champion_score"])
    text = client.get_model_version(MODEL, "2").description
    assert text.startswith("Promoted to champion: test_rmse 1e-09 against champion v1's ")
    assert f"{v1_score:.6g} re-scored on the same test window" in text
    assert "naive forecast RMSE 1e+09" in text and text.count(". ") == 0

    worse = challenger(1e6)
    assert tracking.champion(MODEL, "champion").version == "2"
    tags = tracking.get_version(MODEL, worse).tags
    assert tags[tracking.TAG_PROMOTED] == "false"
    assert "does not beat" in tags[tracking.TAG_REASON]
    text = client.get_model_version(MODEL, worse).description
    assert text.startswith("Not promoted: test_rmse 1e+06 against champion v2's ")
    assert "does not beat" in text

    from pipelines.errors import PipelineError

    with pytest.raises(PipelineError) as err:
        manual_promote(settings, "TEST", "99", "test")  # the known versions, listed plainly
    assert str(err.value).startswith(f"{MODEL} has no version 99 (versions: 1, 2, ")
    assert str(err.value).endswith(f", {worse})")
    manual_promote(settings, "TEST", worse, "test")
    assert tracking.champion(MODEL, "champion").version == worse
    assert "manual" in tracking.get_version(MODEL, worse).tags[tracking.TAG_REASON]
    tags = tracking.get_version(MODEL, worse).tags
    again = manual_promote(settings, "TEST", worse, None)  # already champion: nothing changes
    assert again.endswith(f"version {worse} is already champion (nothing changed)")
    assert tracking.get_version(MODEL, worse).tags == tags
    text = client.get_model_version(MODEL, worse).description
    assert text.startswith("Champion by hand (manual promotion: test): its test_rmse ")
    rollback(settings, "TEST")
    assert tracking.champion(MODEL, "champion").version == "2"
    text = client.get_model_version(MODEL, "2").description
    assert "(rollback from v3)" in text
    # The gate's verdict on v2 is kept beside the rollback, not overwritten by it.
    tags = tracking.get_version(MODEL, "2").tags
    assert tags["promotion.gate_reason"].startswith("promoted: test_rmse 1e-09 beats champion")
    assert text.endswith(f"The promotion gate had decided: {tags['promotion.gate_reason']}.")
    # status reports the latest decision (the rollback), not the newest version's (v3's).
    from pipelines.monitoring import status

    assert status(settings)[0]["last_decision"] == "v2 promoted: rollback from v3"
    rollback(settings, "TEST")
    assert tracking.champion(MODEL, "champion").version == "1"

    # A version whose run died between registering and deciding is settled by the next decision.
    orphan = tracking.register(MODEL, source, result.run_id, {"ticker": "TEST"})
    assert tracking.get_version(MODEL, orphan.version).tags[tracking.TAG_PENDING] == "true"
    challenger(1e6)
    tags = tracking.get_version(MODEL, orphan.version).tags
    assert tags[tracking.TAG_PENDING] == "false" and tags[tracking.TAG_PROMOTED] == "false"
    assert "stopped before" in tags[tracking.TAG_REASON]


@pytest.fixture
def dataset_run(tmp_path):
    """A run in a fresh SQLite store, and a one-row frame to log as its dataset."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("race", artifact_location=str(tmp_path / "artifacts"))
    run_id = MlflowClient().create_run(exp).info.run_id
    yield run_id, pd.DataFrame({"date": ["2020-01-01"], "close": [1.0]})
    mlflow.set_tracking_uri(previous)


def test_dataset_logged_by_a_racing_run_is_reused_after_a_duplicate_key(dataset_run, monkeypatch):
    """Two runs inserting the same new dataset at once: the loser retries and reuses it."""
    import sqlalchemy.exc
    from mlflow import MlflowClient

    from pipelines import tracking

    run_id, frame = dataset_run
    real, calls = MlflowClient.log_inputs, []

    def racing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError(
                "INSERT INTO datasets", {}, Exception("UNIQUE constraint failed: datasets.name")
            )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_inputs", racing)
    tracking.log_dataset(run_id, frame, source="/data/x", digest="d" * 40, name="X")
    assert len(calls) == 2
    inputs = MlflowClient().get_run(run_id).inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == ["X"]


def test_other_dataset_errors_are_not_retried(dataset_run, monkeypatch):
    from mlflow import MlflowClient

    from pipelines import tracking

    run_id, frame = dataset_run
    calls = []

    def broken(self, *args, **kwargs):
        calls.append(1)
        raise RuntimeError("disk full")

    monkeypatch.setattr(MlflowClient, "log_inputs", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        tracking.log_dataset(run_id, frame, source="/data/x", digest="d" * 40, name="X")
    assert len(calls) == 1


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
