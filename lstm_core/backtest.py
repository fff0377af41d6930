"""Walk-forward (rolling-origin) backtest: the last ``eval_cfg.test_fraction`` of the rows is cut
into ``eval_cfg.backtest_folds`` blocks; fold i refits the scaler and a fresh model of the
registered configuration (epochs replaced by ``eval_cfg.backtest_epochs`` when set) on every row
before block i, without a validation part (so without early stopping), and scores the forecasts
whose targets lie in block i. Folds run one after the other: each training keeps both cores busy.
"""

import numpy as np
import pandas as pd

from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig
from lstm_core.data import (
    DATE_COLUMN,
    DataError,
    SplitFrames,
    fit_preprocessor,
    make_dataset,
    prepare_data,
    validate_frame,
)
from lstm_core.evaluate import evaluate_forecasts, predict_prices
from lstm_core.train import train_network

FOLD_COLUMNS = ["fold", "train_rows", "test_start", "test_end", "n_test", "rmse", "naive_rmse",
                "skill"]  # fmt: skip


def fold_bounds(n_rows: int, eval_cfg: EvaluationConfig) -> list[tuple[int, int]]:
    """(start, end) row ranges of the test blocks, oldest first."""
    k = eval_cfg.backtest_folds
    if k == 0:
        return []
    n_test = int(round(n_rows * eval_cfg.test_fraction))
    if n_test < k:
        raise DataError(f"test part has {n_test} rows, fewer than {k} backtest folds")
    edges = np.linspace(n_rows - n_test, n_rows, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def untrainable(
    df: pd.DataFrame, feature_cfg: FeatureConfig, eval_cfg: EvaluationConfig
) -> tuple[str, DataError] | None:
    """Why (the step, "train" or "backtest", and the error) ``df`` cannot be trained; None: it
    can.  Nothing is trained."""
    try:
        prepare_data(df, feature_cfg, eval_cfg)
    except DataError as exc:
        return "train", exc
    try:
        fold_bounds(len(df), eval_cfg)
    except DataError as exc:
        return "backtest", exc
    return None


def walk_forward_backtest(
    df: pd.DataFrame,
    feature_cfg: FeatureConfig,
    eval_cfg: EvaluationConfig,
    model_cfg: ModelConfig,
    training_cfg: TrainingConfig,
) -> pd.DataFrame:
    """Per-fold metrics (rmse, naive_rmse, skill = 1 - rmse/naive_rmse) as a DataFrame."""
    validate_frame(df, feature_cfg.columns)
    frame = df.reset_index(drop=True)
    epochs = eval_cfg.backtest_epochs or training_cfg.epochs
    fold_cfg = training_cfg.model_copy(update={"epochs": epochs, "early_stopping_patience": 0})
    dates, rows = frame[DATE_COLUMN], []
    for i, (start, end) in enumerate(fold_bounds(len(frame), eval_cfg)):
        # the fold only ever sees rows before `end`; its scaler only rows before `start`
        frames = SplitFrames(frame=frame.iloc[:end], train_end=start, val_end=start)
        preprocessor = fit_preprocessor(frames.train, feature_cfg)
        data = make_dataset(frames, preprocessor)
        result = train_network(model_cfg, fold_cfg, data.train)
        predicted = predict_prices(result.model, data.test, preprocessor)
        m = evaluate_forecasts(data, predicted, eval_cfg).metrics
        fold = (i + 1, start, dates.iloc[start], dates.iloc[end - 1], len(data.test))
        rows.append((*fold, m["test_rmse"], m["naive_rmse"], m["skill_vs_naive"]))  # FOLD_COLUMNS
    return pd.DataFrame(rows, columns=FOLD_COLUMNS)
