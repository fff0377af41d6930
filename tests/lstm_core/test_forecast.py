import numpy as np
import pandas as pd
import pytest

from lstm_core.config import FeatureConfig, ModelConfig
from lstm_core.data import DataError, fit_preprocessor
from lstm_core.forecast import next_business_days, recursive_forecast, simulate_paths
from lstm_core.model import build_model, predict_scaled
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
    out = recursive_forecast(model, pre, df, days=4, levels=(0.8, 0.95), n_samples=10, seed=1)
    assert list(out.columns) == ["date", "forecast", "lower_80", "upper_80", "lower_95", "upper_95"]
    assert out["date"].iloc[0] == pd.Timestamp("2021-03-29")  # business day after the last date
    assert len(out) == 4 and out["date"].is_monotonic_increasing
    assert (out["lower_95"] <= out["upper_95"]).all()
    x = pre.latest_window(df)
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
    point, paths = simulate_paths(model, pre, raw, days=2, n_samples=0)
    level = pre.inverse_target(np.array(0.5))
    np.testing.assert_allclose(point, [level, level])
    second = seen[1][0]  # window on day 2: last row = fed-back open, carried-forward close
    np.testing.assert_allclose(second[-1, 0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(second[-1, 1], second[-2, 1])
    assert paths.shape == (0, 2)


def test_short_history_raises():
    df = make_frame(30)
    pre = fit_preprocessor(df, FeatureConfig(lookback=5))
    model = build_model(ModelConfig(layers=1, units=4, backend="keras"), 5, 1, 1)
    with pytest.raises(DataError, match="history has 5 rows, needs at least 6"):
        recursive_forecast(model, pre, df.iloc[:5], days=2)
