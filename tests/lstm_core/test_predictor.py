import numpy as np
import pandas as pd
import pytest

from lstm_core.config import FeatureConfig, ModelConfig
from lstm_core.data import DataError, SplitFrames, fit_preprocessor, model_input
from lstm_core.model import build_model
from lstm_core.predictor import Forecaster
from tests.lstm_core.conftest import make_frame


@pytest.fixture
def forecaster():
    df = make_frame(60)
    pre = fit_preprocessor(df.iloc[:40], FeatureConfig(lookback=5, columns=("open", "high")))
    model = build_model(ModelConfig(layers=2, units=4, backend="keras"), 5, 2, 1, seed=0)
    return Forecaster(model, pre)


def test_predict_one_row_deterministic(forecaster):
    df = make_frame(60)
    out = forecaster.forecast(df, 1, intervals=False)
    assert list(out.columns) == ["date", "forecast"] and len(out) == 1
    assert out["date"].iloc[0] == pd.Timestamp("2021-03-29")
    assert np.isfinite(out["forecast"].iloc[0])
    pd.testing.assert_frame_equal(out, forecaster.forecast(df, 1, intervals=False))
    # only the last lookback+1 rows matter
    pd.testing.assert_frame_equal(out, forecaster.forecast(df.iloc[-6:], 1, intervals=False))
    with pytest.raises(DataError, match="history has 5 rows, needs at least 6"):
        forecaster.forecast(df.iloc[-5:], 1, intervals=False)


def test_short_history_is_refused_in_rows_and_a_gap_of_sessions_is_not(forecaster):
    """The refusal counts rows (trading days), not consecutive days: a suspended stock's
    history has missing sessions, and the forecast uses its most recent rows as they are."""
    df = make_frame(60)
    with pytest.raises(DataError) as info:
        forecaster.forecast(df.iloc[-5:], 1, intervals=False)
    assert str(info.value) == (
        "history has 5 rows, needs at least 6, one per trading day (the most recent 6 are "
        "used: lookback 5 + 1 for the log_return transform)"
    )
    suspended = pd.concat([df.iloc[:-12], df.iloc[-2:]])  # ten sessions missing before the end
    out = forecaster.forecast(suspended, 1, intervals=False)
    assert out["date"].iloc[0] == pd.Timestamp("2021-03-29") and np.isfinite(out["forecast"]).all()


def test_rows_in_any_order_are_sorted_and_a_repeated_date_is_named_with_its_rows(forecaster):
    df = make_frame(60).tail(10).reset_index(drop=True)
    expected = forecaster.forecast(df, 2, intervals=False)
    for frame in (df.iloc[::-1], df.iloc[[0, 1, 2, 3, 4, 6, 5, 7, 8, 9]]):
        pd.testing.assert_frame_equal(forecaster.forecast(frame, 2, intervals=False), expected)
    twice = df.assign(date=df["date"].where(df.index != 5, df["date"].iloc[4]))
    for frame in (twice, twice.iloc[::-1]):  # rows as given: 5 and 6 either way
        with pytest.raises(DataError) as info:
            forecaster.forecast(frame, 1, intervals=False)
        assert str(info.value) == (
            "column 'date': 2021-03-19 is given more than once (rows 5, 6): one row per trading day"
        )
    thrice = df.assign(date=df["date"].where(~df.index.isin([2, 7]), df["date"].iloc[0]))
    with pytest.raises(DataError) as info:
        forecaster.forecast(thrice, 1, intervals=False)
    assert str(info.value) == (
        "column 'date': 2021-03-15 is given more than once (rows 1, 3, 8): one row per trading day"
    )
    blank = df.assign(date=df["date"].dt.strftime("%Y-%m-%d").where(df.index != 3, ""))
    with pytest.raises(DataError) as info:
        forecaster.forecast(blank, 1, intervals=False)
    assert str(info.value) == "column 'date', row 4 of 10: '' is not an ISO date (like 2017-11-10)"


def test_a_row_on_a_day_without_trading_is_refused_naming_it_and_its_row(forecaster):
    """Each row is read as the next session, so a weekend or a holiday the model carries would
    shift the days after it and change the forecast (ingest refuses such rows as well)."""
    df = make_frame(60).tail(10).reset_index(drop=True)  # Monday 2021-03-15 .. Friday 2021-03-26
    saturday = df.assign(date=df["date"].where(df.index != 5, pd.Timestamp("2021-03-20")))
    for frame, row in ((saturday, 6), (saturday.iloc[::-1], 5)):  # rows as given
        with pytest.raises(DataError) as info:
            forecaster.forecast(frame, 1, intervals=False)
        assert str(info.value) == (
            f"column 'date': 2021-03-20 (row {row}) is not a trading day (a Saturday): remove "
            "the row, as the model reads each row as the next session"
        )
    closed = Forecaster(forecaster.model, forecaster.preprocessor, holidays=("2021-03-22",))
    as_text = df.assign(date=df["date"].dt.strftime("%Y-%m-%d"))
    with pytest.raises(DataError) as info:
        closed.forecast(as_text, 1, intervals=False)
    assert str(info.value) == (
        "column 'date': 2021-03-22 (row 6) is not a trading day (a Monday, a holiday of the "
        "model's exchange): remove the row, as the model reads each row as the next session"
    )
    assert len(closed.forecast(as_text.drop(index=5), 1, intervals=False)) == 1


def test_a_bad_price_or_a_time_of_day_is_refused_naming_its_row_as_given(forecaster):
    """A NaN or a price <= 0 (log returns), and a date with a time of day (a daily model: ingest
    refuses it too), are named with their column and row in the order given, as other refusals;
    the model reads no volume, so its message says nothing of volume."""
    df = make_frame(60).tail(10).reset_index(drop=True)
    nan = df.assign(open=df["open"].where(df.index != 9, np.nan))
    for frame, row in ((nan, 10), (nan.iloc[::-1], 1)):  # rows as given, sorted after
        with pytest.raises(DataError) as info:
            forecaster.forecast(frame, 1, intervals=False)
        assert str(info.value) == f"column 'open', row {row} of 10: nan is not a finite number"
    for value in (0, -5):
        low = df.assign(high=df["high"].where(df.index != 3, value))
        with pytest.raises(DataError) as info:
            forecaster.forecast(low, 1, intervals=False)
        assert str(info.value) == (
            f"column 'high', row 4 of 10: {value:.1f} is not positive (the model reads log returns)"
        )

    days = df["date"].dt.strftime("%Y-%m-%d")
    expected = forecaster.forecast(df, 1, intervals=False)
    midnight = df.assign(date=days + "T00:00:00")
    pd.testing.assert_frame_equal(forecaster.forecast(midnight, 1, intervals=False), expected)
    timed = df.assign(date=days.where(df.index != 9, days + " 15:30"))
    with pytest.raises(DataError) as info:
        forecaster.forecast(timed, 1, intervals=False)
    assert str(info.value) == (
        "column 'date', row 10 of 10: '2021-03-26 15:30' is not an ISO date (like 2017-11-10): "
        "the model reads days, not times of day"
    )
    with pytest.raises(DataError) as info:
        forecaster.forecast(df.assign(date=df["date"] + pd.Timedelta(hours=15)), 1)
    assert str(info.value).startswith(
        "column 'date', row 1 of 10: Timestamp('2021-03-15 15:00:00') is not an ISO date"
    )


def test_a_model_without_calibration_forecasts_without_bands(forecaster):
    """Models saved before calibration existed; their pyfunc still passes MC dropout's
    `samples` and `seed`, which are accepted and change nothing."""
    df = make_frame(60)
    out = forecaster.forecast(df, 2, levels=(0.8, 0.95), samples=20, seed=0)
    assert list(out.columns) == ["date", "forecast"]
    pd.testing.assert_frame_equal(out, forecaster.forecast(df, 2, intervals=False))


def test_save_load_round_trip(forecaster, tmp_path):
    df = make_frame(60)
    forecaster.save(tmp_path / "bundle")
    assert {p.name for p in (tmp_path / "bundle").iterdir()} == {
        "model.keras",
        "preprocessor.json",
        "holidays.json",
    }
    loaded = Forecaster.load(tmp_path / "bundle")
    assert loaded.preprocessor.feature_cfg == forecaster.preprocessor.feature_cfg
    pd.testing.assert_frame_equal(
        loaded.forecast(df, 1, intervals=False), forecaster.forecast(df, 1, intervals=False)
    )
    fc = loaded.forecast(df, days=3)
    assert len(fc) == 3 and fc["forecast"].iloc[0] == pytest.approx(
        loaded.forecast(df, 1, intervals=False)["forecast"].iloc[0], rel=1e-5
    )


def test_forecast_days_skip_the_holidays_it_was_saved_with(forecaster, tmp_path):
    df = make_frame(60)  # ends on Friday 2021-03-26
    closed = Forecaster(forecaster.model, forecaster.preprocessor, holidays=("2021-03-29",))
    closed.save(tmp_path / "bundle")
    loaded = Forecaster.load(tmp_path / "bundle")
    assert loaded.holidays == ("2021-03-29",)
    dates = loaded.forecast(df, days=3)["date"]
    assert list(dates) == list(pd.to_datetime(["2021-03-30", "2021-03-31", "2021-04-01"]))
    (tmp_path / "bundle" / "holidays.json").unlink()  # a model saved before holidays existed
    old = Forecaster.load(tmp_path / "bundle").forecast(df, 1, intervals=False)
    assert old["date"].iloc[0] == pd.Timestamp("2021-03-29")


def test_days_are_bounded_by_the_trained_forecast_days_with_or_without_intervals(
    forecaster, tmp_path
):
    df = make_frame(60)
    bounded = Forecaster(forecaster.model, forecaster.preprocessor, max_days=3)
    bounded.save(tmp_path / "bundle")
    loaded = Forecaster.load(tmp_path / "bundle")
    assert loaded.max_days == 3
    assert len(loaded.forecast(df, days=3, intervals=False)) == 3
    refusal = (
        "days 4 is out of range: this model forecasts up to 3 day(s) ahead (the "
        "evaluation.forecast_days it was trained with): ask for 1 to 3, or raise "
        "evaluation.forecast_days and retrain"
    )
    for intervals in (False, True):
        with pytest.raises(DataError) as info:
            loaded.forecast(df, days=4, intervals=intervals)
        assert str(info.value) == refusal
    assert forecaster.max_days is None  # saved before the bound existed: none recorded
    forecaster.check_days(30)  # and no calibration to bound it


def test_calibrated_forecaster_serves_its_bands_after_a_round_trip(forecaster, tmp_path):
    from lstm_core.forecast import calibrate_recursive

    df = make_frame(80)
    frames = SplitFrames(df, 40, 60)
    cal = calibrate_recursive(forecaster.model, forecaster.preprocessor, frames, 2, (0.9,))
    calibrated = Forecaster(forecaster.model, forecaster.preprocessor, cal)
    calibrated.save(tmp_path / "bundle")
    assert (tmp_path / "bundle" / "calibration.json").exists()
    loaded = Forecaster.load(tmp_path / "bundle")
    one = loaded.forecast(df.iloc[:60], 1)
    assert list(one.columns) == ["date", "forecast", "lower_90", "upper_90"]  # calibrated levels
    assert np.log(one["upper_90"].iloc[0] / one["forecast"].iloc[0]) == pytest.approx(
        cal.quantile(0.9, 0)
    )
    pd.testing.assert_frame_equal(
        one, calibrated.forecast(df.iloc[:60], days=1), check_freq=False, rtol=1e-6
    )
    two = loaded.forecast(df.iloc[:60], days=2)
    pd.testing.assert_frame_equal(two, calibrated.forecast(df.iloc[:60], days=2))
    assert loaded.max_days is None  # no bound recorded: the calibration's steps
    with pytest.raises(DataError, match="up to 2 day"):
        loaded.forecast(df.iloc[:60], days=3, intervals=False)
    newer = loaded.recalibrated(df)
    assert newer.calibration.last_date == str(df["date"].iloc[-1].date())
    assert forecaster.recalibrated(df) is forecaster  # uncalibrated (an older model): unchanged


def test_model_input_takes_what_a_user_has():
    """date + the feature columns: extra columns dropped, any order, ISO strings, any row order."""
    df = make_frame(60)
    pre = fit_preprocessor(df.iloc[:40], FeatureConfig(lookback=5, columns=("open", "high")))
    expected = model_input(df, pre)
    assert list(expected.columns) == ["date", "open", "high"]
    plain = df.assign(note="x", date=df["date"].dt.strftime("%Y-%m-%d"))
    shuffled = plain[["note", "high", "close", "date", "open"]].iloc[::-1]
    pd.testing.assert_frame_equal(model_input(shuffled, pre), expected)
    as_text = df.assign(open=df["open"].map(str))
    pd.testing.assert_frame_equal(model_input(as_text, pre), expected)

    with pytest.raises(DataError, match=r"missing column\(s\) \['high'\]"):
        model_input(df.drop(columns=["high"]), pre)
    with pytest.raises(DataError, match="history has 5 rows, needs at least 6"):
        model_input(df.tail(5), pre)
    n = len(df)
    with pytest.raises(DataError, match=f"^column 'open', row 1 of {n}: 'n/a' is not a number$"):
        model_input(df.assign(open="n/a"), pre)
    with pytest.raises(DataError, match=f"^column 'date', row 1 of {n}: 'yesterday' is not an ISO"):
        model_input(df.assign(date="yesterday"), pre)
