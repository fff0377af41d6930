"""Recursive multi-day forecast from the latest window, with MC-dropout intervals.

Only the target column can be predicted, so each simulated day appends a row whose
target is the predicted price and whose other feature columns repeat their last known
value (carried forward: zero return for those columns under ``log_return``).  With a
horizon > 1 model only the first predicted step is used at each iteration.

Conformal bands for these k-day-ahead forecasts come from the same recursion run on the
validation days: :func:`recursive_errors` scores every k = 1..days (see lstm_core.intervals).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from lstm_core.data import DATE_COLUMN, DataError, Preprocessor, validate_frame
from lstm_core.intervals import (
    ConformalCalibration,
    level_name,
    price_scores,
    quantile_bounds,
    recalibrate,
)


def next_business_days(last_date: Any, days: int) -> pd.DatetimeIndex:
    """The ``days`` business days (Mon-Fri, no holiday calendar) after ``last_date``."""
    return pd.bdate_range(pd.Timestamp(last_date) + pd.offsets.BDay(1), periods=days)


def simulate_paths(
    model: Any,
    preprocessor: Preprocessor,
    raw_window: np.ndarray,
    days: int,
    n_samples: int,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Roll the model forward ``days`` steps from raw values ``(rows_needed, n_features)``.

    Returns the deterministic price path ``(days,)`` (dropout off) and ``n_samples``
    stochastic paths ``(n_samples, days)`` (dropout on).
    """
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    j = preprocessor.target_index
    n_paths = 1 + n_samples  # path 0 is the deterministic one
    raw = np.repeat(
        raw_window[None, ...].astype(np.float64), n_paths, axis=0
    )  # (P, rows, n_features)
    out = np.empty((n_paths, days))
    for day in range(days):
        x = preprocessor.transform_values(raw).astype(np.float32)  # (P, lookback, n_features)
        scaled = [np.asarray(model(x[:1], training=False))]
        if n_samples:
            scaled.append(np.asarray(model(x[1:], training=True)))
        first_step = np.concatenate(scaled, axis=0)[:, :1]  # (P, 1)
        price = preprocessor.to_prices(first_step, raw[:, -1, j])[:, 0]  # (P,)
        out[:, day] = price
        new_row = raw[:, -1:, :].copy()  # other columns carried forward
        new_row[:, 0, j] = price
        raw = np.concatenate([raw[:, 1:, :], new_row], axis=1)
    return out[0], out[1:]


def recursive_forecast(
    model: Any,
    preprocessor: Preprocessor,
    history: pd.DataFrame,
    days: int,
    levels: Sequence[float] = (0.8, 0.95),
    n_samples: int = 30,
    seed: int | None = None,
    calibration: ConformalCalibration | None = None,
) -> pd.DataFrame:
    """Forecast the next ``days`` business days after ``history``'s last date.

    Columns: ``date``, ``forecast`` (dropout off) and ``lower_<L>``/``upper_<L>`` per level:
    the conformal band of ``calibration`` when given, else quantiles of ``n_samples``
    MC-dropout paths (omitted when ``n_samples`` is 0).
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    validate_frame(history, preprocessor.feature_cfg.columns)
    need = preprocessor.rows_needed
    if len(history) < need:
        raise DataError(f"history has {len(history)} rows, needs at least {need}")
    raw = preprocessor.column_values(history.iloc[-need:])  # (rows_needed, n_features)
    if calibration is not None:
        n_samples = 0  # the band comes from the calibration, not from dropout
    point, paths = simulate_paths(model, preprocessor, raw, days, n_samples, seed)
    frame = pd.DataFrame(
        {DATE_COLUMN: next_business_days(history[DATE_COLUMN].iloc[-1], days), "forecast": point}
    )
    bounds = None
    if calibration is not None:
        bounds = calibration.bands(point, levels)
    elif n_samples:
        bounds = quantile_bounds(paths, levels)
    if bounds is not None:
        for level in levels:
            frame[f"lower_{level_name(level)}"] = bounds.lower[level]
            frame[f"upper_{level_name(level)}"] = bounds.upper[level]
    return frame


# ----------------------------------------------------------------------------- conformal


def point_paths(
    model: Any, preprocessor: Preprocessor, raw_windows: np.ndarray, days: int
) -> np.ndarray:
    """Deterministic recursive forecasts ``(P, days)`` from raw windows ``(P, rows_needed, n_features)``.

    The same feedback rule as :func:`simulate_paths`, for many windows at once.
    """
    from lstm_core.model import predict_scaled

    j = preprocessor.target_index
    raw = np.array(raw_windows, dtype=np.float64)
    out = np.empty((len(raw), days))
    for day in range(days):
        x = preprocessor.transform_values(raw).astype(np.float32)
        price = preprocessor.to_prices(predict_scaled(model, x)[:, :1], raw[:, -1, j])[:, 0]
        out[:, day] = price
        new_row = raw[:, -1:, :].copy()  # other columns carried forward
        new_row[:, 0, j] = price
        raw = np.concatenate([raw[:, 1:, :], new_row], axis=1)
    return out


def recursive_errors(
    model: Any, preprocessor: Preprocessor, frame: pd.DataFrame, start: int, end: int, days: int
) -> list[np.ndarray]:
    """Scores (price_scores) of the k-day-ahead recursive forecasts (k = 1..days) whose targets lie
    in rows ``[start, end)`` of ``frame``, oldest target first; no row at or after ``end`` is read.
    """
    need = preprocessor.rows_needed
    values = preprocessor.column_values(frame.iloc[:end])
    prices = frame[preprocessor.feature_cfg.target].to_numpy(dtype=np.float64)[:end]
    anchors = np.arange(max(start - days, need - 1), end - 1)  # last known row of each forecast
    if len(anchors) == 0:
        raise DataError(f"rows {start}..{end - 1} leave no forecast to score (needs {need} rows)")
    windows = sliding_window_view(values, need, axis=0).swapaxes(
        1, 2
    )  # window i ends at row i+need-1
    paths = point_paths(model, preprocessor, windows[anchors - need + 1], days)
    errors = []
    for k in range(days):
        target = anchors + k + 1
        keep = (target >= start) & (target < end)
        errors.append(price_scores(prices[target[keep]], paths[keep, k]))
    return errors


def calibrate_recursive(
    model: Any,
    preprocessor: Preprocessor,
    frame: pd.DataFrame,
    start: int,
    end: int,
    days: int,
    levels: Sequence[float],
) -> ConformalCalibration:
    """Split-conformal calibration of :func:`recursive_forecast` on rows ``[start, end)``
    (the validation part: the model did not train on it)."""
    errors = recursive_errors(model, preprocessor, frame, start, end, days)
    short = [k + 1 for k, e in enumerate(errors) if len(e) == 0]
    if short:
        raise DataError(
            f"the validation part ({end - start} rows) is too short to score {days}-day "
            "forecasts: lower evaluation.forecast_days or raise evaluation.val_fraction"
        )
    return ConformalCalibration(
        scores=tuple(errors),
        levels=tuple(levels),
        last_date=str(np.datetime64(frame[DATE_COLUMN].iloc[end - 1], "D")),
    )


def recalibrate_recursive(
    model: Any, preprocessor: Preprocessor, calibration: ConformalCalibration, history: pd.DataFrame
) -> ConformalCalibration:
    """``calibration`` updated with the errors on ``history``'s days after its ``last_date``."""
    validate_frame(history, preprocessor.feature_cfg.columns)
    frame = history.reset_index(drop=True)
    start = int((frame[DATE_COLUMN] <= pd.Timestamp(calibration.last_date)).sum())
    if start >= len(frame) or len(frame) <= preprocessor.rows_needed:
        return calibration  # no new day, or no window before it: nothing to score
    errors = recursive_errors(model, preprocessor, frame, start, len(frame), calibration.steps)
    return recalibrate(calibration, errors, frame[DATE_COLUMN].iloc[-1])
