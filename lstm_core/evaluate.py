"""Metrics in prices of next-day forecasts, next to the naive forecast: MASE, Diebold-Mariano."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lstm_core.config import EvaluationConfig
from lstm_core.data import (
    DATE_COLUMN,
    DataError,
    Preprocessor,
    SplitFrames,
    SplitWindows,
    WindowedData,
    make_dataset,
)
from lstm_core.intervals import (
    ConformalCalibration,
    Intervals,
    band_metrics,
    calibrate,
    level_name,
    price_scores,
)
from lstm_core.model import predict_scaled


def rmse(actual: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(actual)) ** 2)))


def point_metrics(
    actual: np.ndarray, predicted: np.ndarray, anchor: np.ndarray
) -> dict[str, float]:
    """RMSE, MAE, MAPE (%) and directional accuracy (of the move from ``anchor``; flat days left
    out) of 1-D prices."""
    err = predicted - actual
    moved = actual != anchor
    same = np.sign(predicted - anchor) == np.sign(actual - anchor)
    return {
        "rmse": rmse(actual, predicted),
        "mae": float(np.mean(np.abs(err))),
        "mape": float(100.0 * np.mean(np.abs(err / actual))),
        "directional_accuracy": float(np.mean(same[moved])) if moved.any() else float("nan"),
    }


def naive_scale(prices: np.ndarray, train_end: int) -> float:
    """MAE of the one-step naive forecast inside the training part (the MASE denominator)."""
    return float(np.mean(np.abs(np.diff(prices[:train_end]))))


def diebold_mariano(errors_model: np.ndarray, errors_base: np.ndarray) -> tuple[float, float]:
    """Diebold-Mariano test of equal squared-error loss of one-day forecasts: with Harvey et al.'s
    (1997) correction, the paired t-test of the loss differences.  (statistic, two-sided p-value);
    negative: the model's loss is lower; NaN when the differences are constant."""
    from scipy import stats

    d = np.asarray(errors_model, np.float64) ** 2 - np.asarray(errors_base, np.float64) ** 2
    if len(d) < 2 or not np.ptp(d) > 0:
        return float("nan"), float("nan")
    result = stats.ttest_1samp(d, 0.0)
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True)
class Evaluation:
    """Flat metric dict (stable names) and the per-date test predictions."""

    metrics: dict[str, float]
    predictions: pd.DataFrame


def predict_prices(model: Any, windows: SplitWindows, preprocessor: Preprocessor) -> np.ndarray:
    """Deterministic price forecasts ``(n, 1)`` for one split's windows."""
    return preprocessor.to_prices(predict_scaled(model, windows.X), windows.anchor)


def evaluate_forecasts(
    data: WindowedData,
    predicted: np.ndarray,
    eval_cfg: EvaluationConfig,
    intervals: Intervals | None = None,
) -> Evaluation:
    """Score test price forecasts ``(n, 1)`` next to the naive one: point metrics, MASE,
    Diebold-Mariano, and the :func:`band_metrics` of ``intervals`` and of the naive band."""
    test, val, levels = data.test, data.val, eval_cfg.interval_levels
    actual, pred = test.actual[:, 0], np.asarray(predicted)[:, 0]
    naive = test.anchor  # the last known price
    model_m = point_metrics(actual, pred, test.anchor)
    naive_m = point_metrics(actual, naive, test.anchor)
    scale = naive_scale(data.target_prices, data.train_end)
    dm_stat, dm_pvalue = diebold_mariano(pred - actual, naive - actual)
    nan = float("nan")
    metrics = {f"test_{k}": v for k, v in model_m.items()}
    metrics.update(
        mase=model_m["mae"] / scale if scale > 0 else nan,
        naive_rmse=naive_m["rmse"],
        naive_mae=naive_m["mae"],
        skill_vs_naive=1.0 - model_m["rmse"] / naive_m["rmse"] if naive_m["rmse"] > 0 else nan,
        dm_stat=dm_stat,
        dm_pvalue=dm_pvalue,
    )
    dates = test.target_dates[:, 0]
    frame = pd.DataFrame({DATE_COLUMN: dates, "actual": actual, "predicted": pred, "naive": naive})
    naive_band = None
    if len(val):  # the trivial band: last price * exp(+-q), q from its own validation scores
        scores = [price_scores(val.actual[:, 0], val.anchor)]
        naive_band = calibrate(scores, levels, val.target_dates[-1, -1]).bands(naive[:, None])
    for level in levels:
        name = level_name(level)
        frame[f"lower_{name}"] = intervals.lower[level][:, -1] if intervals is not None else nan
        frame[f"upper_{name}"] = intervals.upper[level][:, -1] if intervals is not None else nan
        metrics.update(band_metrics(actual, intervals, level))
        metrics.update(band_metrics(actual, naive_band, level, prefix="naive_"))
    return Evaluation(metrics=metrics, predictions=frame)


def evaluate_model(
    model: Any,
    data: WindowedData,
    eval_cfg: EvaluationConfig,
    calibration: ConformalCalibration | None = None,
) -> Evaluation:
    """Test point forecasts scored in prices, with ``calibration``'s next-day band: the one served
    (:func:`lstm_core.forecast.calibrate_recursive`, calibrated on the validation days only)."""
    predicted = predict_prices(model, data.test, data.preprocessor)
    intervals = calibration.bands(predicted) if calibration is not None else None
    return evaluate_forecasts(data, predicted, eval_cfg, intervals)


def score_on_dates(
    forecaster: Any, frame: pd.DataFrame, dates: Any, metric: str, train_end: int | None = None
) -> float:
    """``metric`` (test_rmse, test_mae or mase) of ``forecaster``'s next-day forecasts of
    ``dates`` through its own preprocessor: a champion scored on a challenger's target days."""
    frame = frame.reset_index(drop=True)
    wanted = pd.DatetimeIndex(pd.to_datetime(np.asarray(dates).ravel())).unique()
    first = int((frame[DATE_COLUMN] < wanted.min()).sum())
    pre = forecaster.preprocessor
    try:  # the rows before the first date play "train": the test windows read their history
        data = make_dataset(SplitFrames(frame=frame, train_end=first, val_end=first), pre)
    except DataError as exc:
        raise DataError(f"cannot score on these dates: {exc}") from None
    test = data.test
    keep = pd.to_datetime(test.target_dates[:, 0]).isin(wanted)
    if keep.sum() != len(wanted):
        raise DataError(f"scored {int(keep.sum())} of {len(wanted)} requested dates")
    predicted = predict_prices(forecaster.model, test, pre)[keep, 0]
    m = point_metrics(test.actual[keep, 0], predicted, test.anchor[keep])
    if metric.removeprefix("test_") != "mase":
        return float(m[metric.removeprefix("test_")])
    scale = naive_scale(data.target_prices, len(frame) if train_end is None else train_end)
    return m["mae"] / scale if scale > 0 else float("nan")
