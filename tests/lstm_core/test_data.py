import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from lstm_core.config import EvaluationConfig, FeatureConfig
from lstm_core.data import (
    DataError,
    Preprocessor,
    SplitFrames,
    fit_preprocessor,
    make_dataset,
    prepare_data,
    split_frame,
    validate_frame,
    window_arrays,
)
from tests.lstm_core.conftest import make_frame


def test_window_arrays_exact_on_arange():
    series = np.arange(20.0).reshape(10, 2)  # (T, n_features): row r = [2r, 2r+1]
    target = series[:, 0]
    X, y = window_arrays(series, target, lookback=3)
    assert X.shape == (7, 3, 2) and y.shape == (7, 1)
    for k in range(7):
        np.testing.assert_array_equal(X[k], series[k : k + 3])
        np.testing.assert_array_equal(y[k], target[k + 3 : k + 4])
    # strided views: nothing copied lookback times
    assert np.shares_memory(X, series) and np.shares_memory(y, series)
    assert X.base is not None


def test_window_arrays_too_short_is_empty():
    X, y = window_arrays(np.arange(3.0)[:, None], np.arange(3.0), lookback=3)
    assert X.shape == (0, 3, 1) and y.shape == (0, 1)


def _arange_frame(n: int) -> pd.DataFrame:
    values = np.arange(1.0, n + 1.0)
    return pd.DataFrame(
        {
            "date": pd.bdate_range("2022-01-03", periods=n),
            "open": 100.0 + values,
            "high": 101.0 + values,
            "low": 99.0 + values,
            "close": 100.5 + values,
            "volume": 1000.0 + values,
        }
    )


@pytest.mark.parametrize("transform", ["price", "log_return"])
def test_make_dataset_targets_stay_inside_their_split(transform):
    df = _arange_frame(60)
    cfg = FeatureConfig(lookback=4, columns=("open", "close"), target_transform=transform)
    frames = split_frame(df, EvaluationConfig(val_fraction=0.2, test_fraction=0.2))
    assert (frames.train_end, frames.val_end) == (36, 48)
    data = make_dataset(frames, fit_preprocessor(frames.train, cfg))
    opens = df["open"].to_numpy()
    bounds = {"train": (0, 36), "val": (36, 48), "test": (48, 60)}
    offset = 1 if transform == "log_return" else 0
    for name, (start, end) in bounds.items():
        w = getattr(data, name)
        rows = w.anchor_index[:, None] + 1  # target rows
        assert rows.min() >= start and rows.max() < end
        # every possible target inside the split is used exactly once
        assert rows[0, 0] == max(start, 4 + offset) and rows[-1, -1] == end - 1
        np.testing.assert_array_equal(w.actual, opens[rows])
        np.testing.assert_array_equal(w.anchor, opens[w.anchor_index])
        np.testing.assert_array_equal(w.target_dates, df["date"].to_numpy()[rows])
        assert w.X.shape == (len(w), 4, 2) and w.y.shape == (len(w), 1)
    # the first validation window reads training history before the split starts
    assert data.val.anchor_index[0] == 35
    # converting the scaled targets back gives the actual prices
    for w in (data.train, data.val, data.test):
        np.testing.assert_allclose(data.preprocessor.to_prices(w.y, w.anchor), w.actual, rtol=1e-5)


def test_price_windows_reproduce_the_tutorial_scaling():
    df = _arange_frame(30)
    cfg = FeatureConfig(lookback=5, target_transform="price")
    frames = split_frame(df, EvaluationConfig(val_fraction=0.2, test_fraction=0.2))
    pre = fit_preprocessor(frames.train, cfg)
    data = make_dataset(frames, pre)
    train_open = frames.train["open"].to_numpy()
    scaled = (train_open - train_open.min()) / np.ptp(train_open)
    # tutorial: X_train[i-60] = scaled[i-60:i], y_train = scaled[i]
    for i in range(5, len(train_open)):
        np.testing.assert_allclose(data.train.X[i - 5, :, 0], scaled[i - 5 : i], rtol=1e-6)
        np.testing.assert_allclose(data.train.y[i - 5, 0], scaled[i], rtol=1e-6)


def test_scaler_sees_only_training_rows_and_handles_values_outside_range():
    df = _arange_frame(50)
    frames = split_frame(df, EvaluationConfig())
    pre = fit_preprocessor(frames.train, FeatureConfig(lookback=5, target_transform="price"))
    train_scaled = pre.transform(frames.train)[:, 0]
    assert [train_scaled.min(), train_scaled.max()] == pytest.approx([0.0, 1.0])  # train only
    test = frames.frame.iloc[frames.val_end :]
    test_scaled = pre.transform(test)[:, 0]
    assert (test_scaled > 1.0).all()  # an uptrend leaves the training range
    np.testing.assert_allclose(pre.inverse_target(test_scaled), test["open"].to_numpy())


def test_log_return_features():
    df = make_frame(40)
    cfg = FeatureConfig(lookback=5, columns=("open", "volume"))
    pre = fit_preprocessor(df.iloc[:30], cfg)
    raw = pre.transform(df)
    assert raw.shape == (39, 2)
    mult, add = pre.mult, pre.add
    np.testing.assert_allclose((raw[:, 0] - add[0]) / mult[0], np.diff(np.log(df["open"])))
    np.testing.assert_allclose((raw[:, 1] - add[1]) / mult[1], np.diff(np.log1p(df["volume"])))


@pytest.mark.parametrize("scaler", ["minmax", "standard"])
def test_a_preprocessor_saved_by_an_earlier_version_scales_as_scikit_learn_did(scaler):
    """Format 1 (models registered before) held scikit-learn's fitted scaler attributes."""
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    df = make_frame(80)
    cfg = FeatureConfig(lookback=5, columns=("open", "volume"), scaler=scaler)
    pre = fit_preprocessor(df.iloc[:50], cfg)
    fitted = (MinMaxScaler() if scaler == "minmax" else StandardScaler()).fit(
        pre.features(pre.column_values(df.iloc[:50]))
    )
    names = ("data_min", "data_max", "data_range", "scale", "min", "mean", "var")
    params = {k: getattr(fitted, f"{k}_").tolist() for k in names if hasattr(fitted, f"{k}_")}
    older_cfg = {**cfg.model_dump(mode="json"), "horizon": 1}  # a key of theirs since removed
    state = {"format": 1, "feature_config": older_cfg,
             "scaler": {"kind": scaler, "n_samples_seen": 50, **params}}  # fmt: skip
    old = Preprocessor.from_dict(json.loads(json.dumps(state)))
    expected = fitted.transform(pre.features(pre.column_values(df)))
    np.testing.assert_allclose(old.transform(df), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pre.transform(df), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="unsupported preprocessor format 3"):
        Preprocessor.from_dict({**state, "format": 3})


@pytest.mark.parametrize("scaler", ["minmax", "standard"])
@pytest.mark.parametrize("transform", ["price", "log_return"])
def test_preprocessor_json_round_trip(scaler, transform):
    df = make_frame(80)
    cfg = FeatureConfig(
        lookback=5, columns=("open", "high", "volume"), scaler=scaler, target_transform=transform
    )
    pre = fit_preprocessor(df.iloc[:50], cfg)
    state = json.loads(json.dumps(pre.to_dict()))  # must be plain JSON
    back = Preprocessor.from_dict(state)
    assert back.feature_cfg == cfg
    np.testing.assert_array_equal(back.transform(df), pre.transform(df))
    y = np.linspace(-0.5, 1.5, 7)[:, None]  # includes values outside [0, 1]
    np.testing.assert_array_equal(
        back.to_prices(y, np.full(7, 10.0)), pre.to_prices(y, np.full(7, 10.0))
    )


def test_standard_scaler_option():
    pre = fit_preprocessor(make_frame(60), FeatureConfig(lookback=5, scaler="standard"))
    z = pre.transform(make_frame(60))
    assert abs(z.mean()) < 1e-9 and abs(z.std() - 1.0) < 1e-9


def test_too_short_series_raises_with_numbers():
    df = _arange_frame(20)
    with pytest.raises(DataError, match=r"training part has 14 rows .* needs 22 "):
        prepare_data(df, FeatureConfig(lookback=20), EvaluationConfig())


def test_an_empty_validation_part_windows_but_a_configured_one_is_required():
    df = _arange_frame(40)  # the backtest's folds and a search's frames have none
    pre = fit_preprocessor(df.iloc[:34], FeatureConfig(lookback=5))
    data = make_dataset(SplitFrames(df, 34, 34), pre)
    assert len(data.val) == 0 and len(data.test) == 6
    with pytest.raises(ValidationError, match="val_fraction\n  Input should be greater than 0"):
        EvaluationConfig(val_fraction=0.0)  # the bands are calibrated on the validation days


def test_constant_series_raises():
    df = _arange_frame(40)
    df["open"] = 7.0
    for transform in ("price", "log_return"):
        with pytest.raises(DataError, match=r"constant over the 28 training rows"):
            prepare_data(
                df, FeatureConfig(lookback=5, target_transform=transform), EvaluationConfig()
            )


def test_bad_frames_raise():
    df = _arange_frame(20)
    with pytest.raises(DataError, match="missing column"):
        validate_frame(df.drop(columns="open"), ("open",))
    with pytest.raises(DataError, match="strictly increasing"):
        validate_frame(df.iloc[::-1], ("open",))


def test_a_bad_value_is_named_by_its_column_and_row():
    """Not finite (either transform), or too low for a log: the first is named, 1-based; volume's
    rule (0 allowed) is said only of volume."""
    df = _arange_frame(20)
    columns = ("open", "volume")
    for transform in ("price", "log_return"):
        cfg = FeatureConfig(lookback=5, columns=columns, target_transform=transform)
        for value in (np.nan, np.inf):
            with pytest.raises(DataError) as info:
                fit_preprocessor(df.assign(volume=df["volume"].where(df.index != 3, value)), cfg)
            assert (
                str(info.value) == f"column 'volume', row 4 of 20: {value} is not a finite number"
            )
    log = FeatureConfig(lookback=5, columns=columns)
    for value in (0.0, -5.0):
        with pytest.raises(DataError) as info:
            fit_preprocessor(df.assign(open=df["open"].where(df.index != 7, value)), log)
        assert str(info.value) == (
            f"column 'open', row 8 of 20: {value} is not positive (the model reads log returns)"
        )
    fit_preprocessor(df.assign(volume=df["volume"].where(df.index != 3, 0.0)), log)  # suspended
    with pytest.raises(DataError) as info:
        fit_preprocessor(df.assign(volume=df["volume"].where(df.index != 3, -1.0)), log)
    assert str(info.value) == (
        "column 'volume', row 4 of 20: -1.0 is negative (the model reads log returns)"
    )
    price = FeatureConfig(lookback=5, columns=columns, target_transform="price")
    fit_preprocessor(df.assign(open=df["open"].where(df.index != 7, -5.0)), price)  # no log
