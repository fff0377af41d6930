"""Score a trained forecaster on another model's test dates (champion vs challenger)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lstm_core.data import DATE_COLUMN, DataError, SplitFrames, make_dataset
from lstm_core.evaluate import point_metrics, predict_prices

METRICS = ("rmse", "mae", "mase")


def one_step_predictions(forecaster: Any, frame: pd.DataFrame, dates: Any) -> pd.DataFrame:
    """The forecaster's one-day-ahead price for each of `dates`, from the rows before it.

    Uses the forecaster's own preprocessor (its lookback, features and fitted scaler), so
    a champion with another configuration is scored on exactly the same target days.
    """
    frame = frame.reset_index(drop=True)
    wanted = pd.DatetimeIndex(pd.to_datetime(np.asarray(dates).ravel()))
    first = int((frame[DATE_COLUMN] < wanted.min()).sum())
    pre = forecaster.preprocessor
    # Everything before the first scored date plays "train" so the test windows can read
    # their full history; nothing after a target date is ever read by its window.
    frames = SplitFrames(frame=frame, train_end=first, val_end=first)
    try:
        data = make_dataset(frames, pre)
    except DataError as exc:
        raise DataError(f"cannot score on these dates: {exc}") from None
    predicted = predict_prices(forecaster.model, data.test, pre)[:, 0]
    out = pd.DataFrame(
        {
            DATE_COLUMN: pd.to_datetime(data.test.target_dates[:, 0]),
            "actual": data.test.actual[:, 0],
            "predicted": predicted,
            "anchor": data.test.anchor,
        }
    )
    out = out[out[DATE_COLUMN].isin(wanted)].reset_index(drop=True)
    if len(out) != len(wanted.unique()):
        raise DataError(f"scored {len(out)} of {len(wanted.unique())} requested dates")
    return out


def score_on_dates(
    forecaster: Any, frame: pd.DataFrame, dates: Any, metric: str, train_end: int | None = None
) -> float:
    """One error metric (test_rmse, test_mae or mase) of `forecaster` on `dates`."""
    scored = one_step_predictions(forecaster, frame, dates)
    m = point_metrics(
        scored["actual"].to_numpy(), scored["predicted"].to_numpy(), scored["anchor"].to_numpy()
    )
    name = metric.removeprefix("test_")
    if name == "mase":
        prices = frame[forecaster.preprocessor.feature_cfg.target].to_numpy(dtype=np.float64)
        end = train_end if train_end is not None else len(prices)
        scale = float(np.mean(np.abs(np.diff(prices[:end]))))
        return m["mae"] / scale if scale > 0 else float("nan")
    return float(m[name])
