import numpy as np
import pandas as pd
import pytest

from lstm_core.config import FeatureConfig, ModelConfig
from lstm_core.data import DataError, SplitFrames, fit_preprocessor
from lstm_core.forecast import (
    calibrate_recursive,
    next_business_days,
    recursive_errors,
    simulate_paths,
)
from lstm_core.model import build_model, predict_scaled
from lstm_core.predictor import Forecaster
from tests.lstm_core.conftest import make_frame


def test_next_business_days_skip_weekends():
    days = next_business_days(pd.Timestamp("2024-01-05"), 3)  # a Friday
    assert list(days.strftime("%a %d")) == ["Mon 08", "Tue 09", "Wed 10"]


@pytest.mark.parametrize("transform", ["log_return", "price"])
def test_recursive_forecast_first_day_matches_one_step(transform):
    df = make_frame(60)
    cfg = FeatureConfig(lookback=5, columns=("open", "close", "volume"), target_transform=transform)
    pre = fit_preprocessor(df.iloc[:40], cfg)
    model = build_model(ModelConfig(layers=1, units=4, backend="keras"), 5, 3, 1, seed=0)
    out = Forecaster(model, pre).forecast(df, days=4)
    assert out["date"].iloc[0] == pd.Timestamp("2021-03-29")  # business day after the last date
    assert len(out) == 4 and out["date"].is_monotonic_increasing
    x = pre.transform(df.iloc[-pre.rows_needed :])[None].astype(np.float32)
    expected = pre.to_prices(predict_scaled(model, x), np.array([df["open"].iloc[-1]]))[0, 0]
    assert out["forecast"].iloc[0] == pytest.approx(expected, rel=1e-6)


def test_simulate_paths_feeds_back_the_target_and_carries_others():
    df = make_frame(30)
    cfg = FeatureConfig(lookback=3, columns=("open", "close"), target_transform="price")
    pre = fit_preprocessor(df, cfg)

    seen = []

    def model(x, training=False):
        seen.append(np.array(x))
        return np.full((len(x), 1), 0.5, dtype=np.float32)  # constant scaled price

    raw = pre.column_values(df.iloc[-3:])
    paths = simulate_paths(pre, np.stack([raw, raw]), 2, model)
    level = pre.inverse_target(np.array(0.5))
    np.testing.assert_allclose(paths, [[level, level], [level, level]])
    second = seen[1][0]  # window on day 2: last row = fed-back open, carried-forward close
    np.testing.assert_allclose(second[-1, 0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(second[-1, 1], second[-2, 1])


def test_short_history_raises():
    df = make_frame(30)
    pre = fit_preprocessor(df, FeatureConfig(lookback=5))
    model = build_model(ModelConfig(layers=1, units=4, backend="keras"), 5, 1, 1)
    with pytest.raises(DataError, match="history has 5 rows, needs at least 6"):
        Forecaster(model, pre).forecast(df.iloc[:5], days=2)


class _ConstantModel:
    """Stands in for a loaded Keras model: every window's scaled output is 0.5."""

    def predict_on_batch(self, x):
        return np.full((len(x), 1), 0.5, dtype=np.float32)


def test_recursive_errors_by_hand_and_only_before_end():
    """A constant-price model: the k-day score is |log(price[t] / level)| for every target row t
    in [start, end), k = 1..3, whatever the anchor; rows from `end` on are never read."""
    df = make_frame(40)
    pre = fit_preprocessor(df.iloc[:20], FeatureConfig(lookback=3, target_transform="price"))
    level = float(pre.inverse_target(np.array(0.5)))
    errors = recursive_errors(_ConstantModel(), pre, df, 25, 32, 3)
    for e in errors:
        expected = np.abs(np.log(df["open"].to_numpy()[25:32] / level))
        np.testing.assert_allclose(e, expected, rtol=1e-5)
    poisoned = df.copy()
    poisoned.loc[32:, "open"] = -1.0  # invalid prices after `end`
    again = recursive_errors(_ConstantModel(), pre, poisoned, 25, 32, 3)
    for a, b in zip(errors, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_simulated_paths_match_the_served_forecast():
    df = make_frame(60)
    cfg = FeatureConfig(lookback=5, columns=("open", "volume"))
    pre = fit_preprocessor(df.iloc[:40], cfg)
    model = build_model(ModelConfig(layers=1, units=4, backend="keras"), 5, 2, 1, seed=0)
    raw = pre.column_values(df.iloc[-pre.rows_needed :])
    paths = simulate_paths(pre, np.stack([raw, raw]), 3, lambda x: predict_scaled(model, x))
    served = Forecaster(model, pre).forecast(df, days=3)["forecast"].to_numpy()
    np.testing.assert_allclose(paths[0], served, rtol=1e-5)
    np.testing.assert_array_equal(paths[0], paths[1])


def test_conformal_forecast_and_recalibration():
    df = make_frame(90)
    pre = fit_preprocessor(df.iloc[:50], FeatureConfig(lookback=5))
    model = build_model(ModelConfig(layers=1, units=4, backend="keras"), 5, 1, 1, seed=0)
    cal = calibrate_recursive(model, pre, SplitFrames(df, 50, 70), 3, (0.8, 0.95))
    assert [len(s) for s in cal.scores] == [20, 20, 20]
    assert cal.last_date == str(df["date"].iloc[69].date())
    calibrated = Forecaster(model, pre, cal)
    out = calibrated.forecast(df.iloc[:70], days=3, levels=(0.8,))
    q = np.log(out["upper_80"] / out["forecast"])
    np.testing.assert_allclose(q, [cal.quantile(0.8, k) for k in range(3)], rtol=1e-9)
    np.testing.assert_allclose(np.log(out["forecast"] / out["lower_80"]), q, rtol=1e-9)
    with pytest.raises(ValueError, match="up to 3 day"):
        calibrated.forecast(df, days=4)

    # history up to the calibration's last day: nothing new to learn
    assert calibrated.recalibrated(df.iloc[:70]).calibration is cal
    assert calibrated.recalibrated(df.iloc[-6:]).calibration is cal  # one window, no target
    short = calibrated.recalibrated(df.iloc[-8:]).calibration  # 2 one-day, 1 two-day target
    assert [len(s) for s in short.scores] == [20, 20, 20]
    np.testing.assert_array_equal(short.scores[2], cal.scores[2])
    assert not np.array_equal(short.scores[0], cal.scores[0])
    new = calibrated.recalibrated(df).calibration
    assert new.last_date == str(df["date"].iloc[-1].date())
    fresh = recursive_errors(model, pre, df, 70, 90, 3)
    for old, upd, f in zip(cal.scores, new.scores, fresh, strict=True):
        assert len(upd) == len(old)  # the validation-sized window
        np.testing.assert_allclose(upd, np.concatenate([old, f])[-len(old) :])
