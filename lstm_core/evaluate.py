"""Metrics in price units, baselines on the same targets, Diebold-Mariano test.

With horizon h > 1 every metric scores the h-th step (the h-day-ahead price), which is
also what the Diebold-Mariano horizon refers to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig
from lstm_core.data import DATE_COLUMN, Preprocessor, SplitWindows, WindowedData, prepare_data
from lstm_core.intervals import (
    Intervals,
    calibrate,
    conformal_quantile,
    coverage,
    interval_score,
    level_name,
    mc_dropout_intervals,
    price_band,
    price_scores,
    width,
)
from lstm_core.model import build_model, predict_scaled
from lstm_core.train import TrainResult, train_model

# ----------------------------------------------------------------------------- metrics


def point_metrics(
    actual: np.ndarray, predicted: np.ndarray, anchor: np.ndarray
) -> dict[str, float]:
    """RMSE, MAE, MAPE (%), directional accuracy for 1-D price arrays.

    Direction is the sign of the move from the anchor (last known price); days on which
    the actual price did not move are left out of the directional accuracy.
    """
    err = predicted - actual
    moved = actual != anchor
    direction = (
        float(
            np.mean(
                np.sign(predicted[moved] - anchor[moved]) == np.sign(actual[moved] - anchor[moved])
            )
        )
        if moved.any()
        else float("nan")
    )
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "mape": float(100.0 * np.mean(np.abs(err / actual))),
        "directional_accuracy": direction,
    }


def rmse(actual: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(actual)) ** 2)))


def naive_scale(prices: np.ndarray, train_end: int) -> float:
    """MAE of the one-step naive forecast inside the training part (the MASE denominator)."""
    return float(np.mean(np.abs(np.diff(prices[:train_end]))))


def baseline_forecasts(
    prices: np.ndarray, anchor_index: np.ndarray, horizon: int, ma_window: int
) -> dict[str, np.ndarray]:
    """Naive, drift and moving-average forecasts ``(n,)`` of price ``anchor + horizon``.

    All use only prices up to each anchor row: naive = last price; drift = last price +
    horizon * average daily change since the first row; moving average = mean of the last
    ``ma_window`` prices (fewer at the very start).
    """
    last = prices[anchor_index]
    slope = (last - prices[0]) / np.maximum(anchor_index, 1)
    csum = np.concatenate([[0.0], np.cumsum(prices)])
    lo = np.maximum(anchor_index + 1 - ma_window, 0)
    ma = (csum[anchor_index + 1] - csum[lo]) / (anchor_index + 1 - lo)
    return {"naive": last, "drift": last + horizon * slope, "moving_average": ma}


def diebold_mariano(
    errors_model: np.ndarray, errors_base: np.ndarray, horizon: int = 1
) -> tuple[float, float]:
    """Diebold-Mariano test of equal squared-error loss with the Harvey et al. (1997) correction.

    Negative statistic = the model's loss is lower.  Returns (statistic, two-sided p-value
    from Student's t with n-1 degrees of freedom); NaN when the loss difference is constant.
    """
    from scipy import stats

    d = (
        np.asarray(errors_model, dtype=np.float64) ** 2
        - np.asarray(errors_base, dtype=np.float64) ** 2
    )
    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    d_mean = d.mean()
    centred = d - d_mean
    # long-run variance with autocovariances up to lag h-1 (h-step forecasts overlap)
    gamma = [float(centred[k:] @ centred[: n - k]) / n for k in range(min(horizon, n))]
    variance = (gamma[0] + 2.0 * sum(gamma[1:])) / n
    if not variance > 0:
        return float("nan"), float("nan")
    dm = d_mean / np.sqrt(variance)
    correction = np.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    stat = float(dm * correction)
    return stat, float(2.0 * stats.t.sf(abs(stat), df=n - 1))


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Evaluation:
    """Flat metric dict (stable names) and the per-date predictions of the scored split."""

    metrics: dict[str, float]
    predictions: pd.DataFrame


def predict_prices(model: Any, windows: SplitWindows, preprocessor: Preprocessor) -> np.ndarray:
    """Deterministic price forecasts ``(n, horizon)`` for one split's windows."""
    return preprocessor.to_prices(predict_scaled(model, windows.X), windows.anchor)


def evaluate_forecasts(
    data: WindowedData,
    predicted: np.ndarray,
    eval_cfg: EvaluationConfig,
    intervals: Intervals | None = None,
    split: str = "test",
) -> Evaluation:
    """Score price forecasts ``(n, horizon)`` for ``split`` against the baselines.

    Metric names: test_rmse, test_mae, test_mape, test_directional_accuracy, mase,
    naive_rmse, naive_mae, drift_rmse, ma_rmse, skill_vs_naive, dm_stat, dm_pvalue,
    and per level (NaN without intervals): interval_coverage_<level%>, interval_width_<L>
    (mean, prices), interval_score_<L> (Winkler), and naive_interval_coverage_<L> /
    naive_interval_width_<L> / naive_interval_score_<L> for the naive forecast's band built
    the same way (the validation quantile of its own scores) on the same days.
    """
    windows: SplitWindows = getattr(data, split)
    h = data.horizon
    step = h - 1  # score the h-day-ahead price
    actual = windows.actual[:, step]
    pred = np.asarray(predicted)[:, step]
    base = baseline_forecasts(
        data.target_prices, windows.anchor_index, h, eval_cfg.moving_average_window
    )
    model_m = point_metrics(actual, pred, windows.anchor)
    naive_m = point_metrics(actual, base["naive"], windows.anchor)
    scale = naive_scale(data.target_prices, data.train_end)
    dm_stat, dm_p = diebold_mariano(pred - actual, base["naive"] - actual, h)
    metrics: dict[str, float] = {f"{split}_{k}": v for k, v in model_m.items()}
    metrics.update(
        {
            "mase": model_m["mae"] / scale if scale > 0 else float("nan"),
            "naive_rmse": naive_m["rmse"],
            "naive_mae": naive_m["mae"],
            "drift_rmse": rmse(actual, base["drift"]),
            "ma_rmse": rmse(actual, base["moving_average"]),
            "skill_vs_naive": 1.0 - model_m["rmse"] / naive_m["rmse"]
            if naive_m["rmse"] > 0
            else float("nan"),
            "dm_stat": dm_stat,
            "dm_pvalue": dm_p,
        }
    )
    frame = pd.DataFrame(
        {
            DATE_COLUMN: windows.target_dates[:, step],
            "actual": actual,
            "predicted": pred,
            "naive": base["naive"],
        }
    )
    val = data.val
    naive_scores = price_scores(val.actual[:, step], val.anchor) if split != "val" else []
    for level in eval_cfg.interval_levels:
        name = level_name(level)
        if intervals is not None and level in intervals.lower:
            lower, upper = intervals.lower[level][:, step], intervals.upper[level][:, step]
        else:
            lower = upper = np.full(len(actual), np.nan)
        metrics[f"interval_coverage_{name}"] = (
            coverage(actual, lower, upper) if intervals is not None else float("nan")
        )
        metrics[f"interval_width_{name}"] = width(lower, upper)
        metrics[f"interval_score_{name}"] = interval_score(actual, lower, upper, level)
        # the trivial band: last price * exp(+-q), q from its own validation scores
        q = conformal_quantile(naive_scores, level) if len(naive_scores) else float("nan")
        n_lower, n_upper = price_band(base["naive"], q)
        metrics[f"naive_interval_coverage_{name}"] = (
            coverage(actual, n_lower, n_upper) if len(naive_scores) else float("nan")
        )
        metrics[f"naive_interval_width_{name}"] = width(n_lower, n_upper)
        metrics[f"naive_interval_score_{name}"] = interval_score(actual, n_lower, n_upper, level)
        frame[f"lower_{name}"] = lower
        frame[f"upper_{name}"] = upper
    return Evaluation(metrics=metrics, predictions=frame)


def evaluate_model(
    model: Any,
    data: WindowedData,
    eval_cfg: EvaluationConfig,
    seed: int | None = None,
    split: str = "test",
) -> Evaluation:
    """Point forecasts + intervals (``eval_cfg.intervals``) for ``split``, scored in prices.

    Conformal bands are calibrated on the validation windows only, never on ``split``.
    """
    windows: SplitWindows = getattr(data, split)
    predicted = predict_prices(model, windows, data.preprocessor)
    if eval_cfg.intervals == "conformal":
        intervals = conformal_intervals(model, data, predicted, eval_cfg.interval_levels, split)
    else:
        intervals = mc_dropout_intervals(
            model,
            windows.X,
            windows.anchor,
            data.preprocessor,
            eval_cfg.interval_levels,
            eval_cfg.mc_samples,
            seed,
        )
    return evaluate_forecasts(data, predicted, eval_cfg, intervals, split)


def conformal_intervals(
    model: Any,
    data: WindowedData,
    predicted: np.ndarray,
    levels: Sequence[float],
    split: str = "test",
) -> Intervals:
    """Split-conformal bands around ``predicted`` ``(n, horizon)`` from the validation errors."""
    if split == "val" or len(data.val) == 0:
        raise ValueError("conformal intervals need a validation part other than the scored split")
    val_predicted = predict_prices(model, data.val, data.preprocessor)
    calibration = calibrate(data.val.actual, val_predicted, levels, data.val.target_dates[-1, -1])
    return calibration.bands(predicted)


@dataclass(frozen=True)
class ExperimentResult:
    data: WindowedData
    training: TrainResult
    evaluation: Evaluation


def run_experiment(
    df: pd.DataFrame,
    feature_cfg: FeatureConfig,
    model_cfg: ModelConfig,
    training_cfg: TrainingConfig,
    eval_cfg: EvaluationConfig,
    callbacks: Sequence[Any] = (),
) -> ExperimentResult:
    """DataFrame -> windows -> trained model -> test metrics (each step is a public function)."""
    data = prepare_data(df, feature_cfg, eval_cfg)
    model = build_model(
        model_cfg, data.lookback, data.n_features, data.horizon, seed=training_cfg.seed
    )
    result = train_model(
        model, data.train.X, data.train.y, data.val.X, data.val.y, training_cfg, callbacks,
        backend=model_cfg.backend,
    )  # fmt: skip
    evaluation = evaluate_model(result.model, data, eval_cfg, seed=training_cfg.seed)
    return ExperimentResult(data=data, training=result, evaluation=evaluation)
