"""Recursive multi-day forecasts, conformally calibrated by the same recursion on validation days.

Only the target column can be predicted, so each simulated day appends a row whose target is the
predicted price and whose other columns repeat their last known value (a zero return under
``log_return``); a model saved with more outputs (an earlier ``horizon``) contributes its first.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from lstm_core.data import DATE_COLUMN, DataError, Preprocessor, SplitFrames, trading_days
from lstm_core.intervals import ConformalCalibration, calibrate, price_scores
from lstm_core.model import predict_scaled


def next_business_days(last_date: Any, days: int, holidays: Sequence[str] = ()) -> pd.DatetimeIndex:
    """The ``days`` weekdays after ``last_date`` that are not among ``holidays``."""
    day = trading_days(holidays)
    return pd.date_range(pd.Timestamp(last_date) + day, periods=days, freq=day)


def simulate_paths(
    preprocessor: Preprocessor, raw: np.ndarray, days: int, predict: Callable[..., np.ndarray]
) -> np.ndarray:
    """Price paths ``(P, days)`` from raw windows ``(P, rows_needed, n_features)``."""
    j = preprocessor.target_index
    raw = np.array(raw, dtype=np.float64)
    out = np.empty((len(raw), days))
    for day in range(days):
        scaled = predict(preprocessor.transform(raw).astype(np.float32))
        out[:, day] = preprocessor.to_prices(scaled[:, :1], raw[:, -1, j])[:, 0]
        raw[:, :-1] = raw[:, 1:]  # one day on: the last row's other columns carry forward
        raw[:, -1, j] = out[:, day]
    return out


def recursive_errors(
    model: Any, preprocessor: Preprocessor, frame: pd.DataFrame, start: int, end: int, days: int
) -> list[np.ndarray]:
    """Scores of the k-day-ahead forecasts, k = 1..days, of rows ``[start, end)`` (none after)."""
    need = preprocessor.rows_needed
    values = preprocessor.column_values(frame.iloc[:end])
    anchors = np.arange(max(start - days, need - 1), end - 1)  # last known row of each forecast
    if len(anchors) == 0:
        raise DataError(f"rows {start}..{end - 1} leave no forecast to score (needs {need} rows)")
    windows = sliding_window_view(values, need, axis=0).swapaxes(1, 2)  # i ends at row i+need-1
    paths = simulate_paths(
        preprocessor, windows[anchors - need + 1], days, lambda x: predict_scaled(model, x)
    )
    errors = []
    for k in range(days):
        target = anchors + k + 1
        keep = (target >= start) & (target < end)
        actual = values[target[keep], preprocessor.target_index]
        errors.append(price_scores(actual, paths[keep, k]))
    return errors


def calibrate_recursive(
    model: Any, preprocessor: Preprocessor, frames: SplitFrames, days: int, levels: Sequence[float]
) -> ConformalCalibration:
    """Split-conformal calibration of ``days``-day recursive forecasts on the validation part."""
    start, end = frames.train_end, frames.val_end
    errors = recursive_errors(model, preprocessor, frames.frame, start, end, days)
    return calibrate(errors, levels, frames.frame[DATE_COLUMN].iloc[end - 1])
