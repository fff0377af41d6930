"""Recursive multi-day forecast from the latest window, with MC-dropout intervals.

Only the target column can be predicted, so each simulated day appends a row whose
target is the predicted price and whose other feature columns repeat their last known
value (carried forward: zero return for those columns under ``log_return``).  With a
horizon > 1 model only the first predicted step is used at each iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lstm_core.data import DATE_COLUMN, DataError, Preprocessor, validate_frame
from lstm_core.intervals import level_name, quantile_bounds


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
) -> pd.DataFrame:
    """Forecast the next ``days`` business days after ``history``'s last date.

    Columns: ``date``, ``forecast`` (dropout off) and ``lower_<L>``/``upper_<L>`` per level
    (quantiles of ``n_samples`` MC-dropout paths; omitted when ``n_samples`` is 0).
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    validate_frame(history, preprocessor.feature_cfg.columns)
    need = preprocessor.rows_needed
    if len(history) < need:
        raise DataError(f"history has {len(history)} rows, needs at least {need}")
    raw = preprocessor.column_values(history.iloc[-need:])  # (rows_needed, n_features)
    point, paths = simulate_paths(model, preprocessor, raw, days, n_samples, seed)
    frame = pd.DataFrame(
        {DATE_COLUMN: next_business_days(history[DATE_COLUMN].iloc[-1], days), "forecast": point}
    )
    if n_samples and levels:
        bounds = quantile_bounds(paths, levels)
        for level in levels:
            frame[f"lower_{level_name(level)}"] = bounds.lower[level]
            frame[f"upper_{level_name(level)}"] = bounds.upper[level]
    return frame
