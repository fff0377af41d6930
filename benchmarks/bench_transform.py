"""Test RMSE / naive RMSE for target_transform=price vs log_return on Ping An opening prices.

Chronological 70/15/15 split, the tutorial network (4 x LSTM(50) + Dropout(0.2), Adam, MSE,
20 epochs, batch 32, lookback 60).  Usage:
    .venv/bin/python benchmarks/bench_transform.py [epochs] [fast|keras] [minmax|standard] [transforms,...]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402

from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig  # noqa: E402
from lstm_core.evaluate import run_experiment  # noqa: E402

CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "平安银行.csv"
RENAME = {
    "日期": "date",
    "开盘价(元)": "open",
    "最高价(元)": "high",
    "最低价(元)": "low",
    "收盘价(元)": "close",
    "成交量(股)": "volume",
}


def load() -> pd.DataFrame:
    df = pd.read_csv(CSV, encoding="gb18030").rename(columns=RENAME)
    df["date"] = pd.to_datetime(df["date"])
    return df[list(RENAME.values())].sort_values("date").reset_index(drop=True)


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    backend = sys.argv[2] if len(sys.argv) > 2 else "keras"
    scaler = sys.argv[3] if len(sys.argv) > 3 else "minmax"
    transforms = sys.argv[4].split(",") if len(sys.argv) > 4 else ["price", "log_return"]
    df = load()
    eval_cfg = EvaluationConfig(val_fraction=0.15, test_fraction=0.15, mc_samples=2)
    for transform in transforms:
        start = time.perf_counter()
        result = run_experiment(
            df,
            FeatureConfig(
                lookback=60,
                target="open",
                columns=("open",),
                target_transform=transform,
                scaler=scaler,
            ),
            ModelConfig(backend=backend),
            TrainingConfig(epochs=epochs, batch_size=32, seed=42),
            eval_cfg,
        )
        m = result.evaluation.metrics
        print(
            f"{transform:10s} {scaler:8s} test_rmse={m['test_rmse']:.4f} naive_rmse={m['naive_rmse']:.4f} "
            f"ratio={m['test_rmse'] / m['naive_rmse']:.3f} skill={m['skill_vs_naive']:+.3f} "
            f"dm={m['dm_stat']:.2f} p={m['dm_pvalue']:.3g} "
            f"dir_acc={m['test_directional_accuracy']:.3f} epochs={result.training.epochs_run} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
