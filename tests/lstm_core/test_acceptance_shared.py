"""Acceptance: the tutorial configuration end to end on ../shared/data/平安银行.csv."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig
from lstm_core.data import fit_preprocessor, make_dataset, split_frame
from lstm_core.evaluate import evaluate_model
from lstm_core.forecast import calibrate_recursive
from lstm_core.model import build_model
from lstm_core.train import train_model

CSV = Path(__file__).parents[2].parent / "shared" / "data" / "平安银行.csv"
RENAME = {
    "日期": "date",
    "开盘价(元)": "open",
    "最高价(元)": "high",
    "最低价(元)": "low",
    "收盘价(元)": "close",
    "成交量(股)": "volume",
}


@pytest.mark.shared
@pytest.mark.skipif(not CSV.exists(), reason=f"{CSV} not present")
def test_tutorial_configuration_on_ping_an():
    df = pd.read_csv(CSV, encoding="gb18030").rename(columns=RENAME)
    df["date"] = pd.to_datetime(df["date"])
    df = df[list(RENAME.values())]
    # the last 1000 days keep the run to seconds; every split still holds 60-day windows
    df = df.iloc[-1000:].reset_index(drop=True)

    features = FeatureConfig(
        lookback=60, target="open", columns=("open",), target_transform="price"
    )
    eval_cfg = EvaluationConfig(val_fraction=0.15, test_fraction=0.15)
    frames = split_frame(df, eval_cfg)
    preprocessor = fit_preprocessor(frames.train, features)
    # the scaler never saw a validation or test value
    low, high = preprocessor.inverse_target(np.array([0.0, 1.0]))
    assert [low, high] == pytest.approx([frames.train["open"].min(), frames.train["open"].max()])

    data = make_dataset(frames, preprocessor)
    assert data.train.X.shape[1:] == (60, 1)
    model = build_model(
        ModelConfig(backend="keras"), 60, 1, 1, seed=0
    )  # 4 x LSTM(50), Dropout(0.2)
    result = train_model(
        model,
        data.train.X,
        data.train.y,
        data.val.X,
        data.val.y,
        TrainingConfig(epochs=1, batch_size=32),
    )
    assert result.epochs_run == 1
    days, levels = eval_cfg.forecast_days, eval_cfg.interval_levels
    calibration = calibrate_recursive(result.model, preprocessor, frames, days, levels)
    ev = evaluate_model(result.model, data, eval_cfg, calibration)
    m = ev.metrics
    assert all(np.isfinite(v) for k, v in m.items()), m
    assert m["naive_rmse"] > 0 and "naive" in ev.predictions
    test = frames.frame.iloc[frames.val_end :]
    assert len(ev.predictions) == len(test)
    assert ev.predictions["date"].iloc[0] == test["date"].iloc[0]
