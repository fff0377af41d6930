"""Which target transform and scaler: test RMSE against the naive forecast on three series.

Usage:  .venv/bin/python benchmarks/bench_transform.py [--epochs 20] [--backend fast]
            [--datasets pingan,msft,ar1] [--configs price/minmax,log_return/minmax,log_return/standard]

Series (opening prices, chronological 70/15/15 split, lookback 60, the tutorial's network:
4 x LSTM(50) + Dropout(0.2), Adam, MSE, batch 32, seed 42):

* ``pingan``: ../shared/data/平安银行.csv (skipped when absent);
* ``msft``: the bundled data/msft.csv;
* ``ar1``: synthetic prices whose daily log returns follow r(t) = φ·r(t-1) + ε(t), ε ~ N(0, σ²),
  generated here with a fixed seed.  The best possible one-day forecast is known,
  P(t-1)·exp(φ·r(t-1) + σ²/2), so its test RMSE (the noise floor) is printed as ``ideal``.

One line per (series, transform/scaler): test RMSE, naive RMSE, their ratio (below 1 beats the
naive last-value forecast), the Diebold-Mariano p-value against naive, and, for ``ar1``, the
ratio to the ideal RMSE.  A final table gives the mean ratio to naive per configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
PINGAN = ROOT.parent / "shared" / "data" / "平安银行.csv"
MSFT = ROOT / "data" / "msft.csv"
PINGAN_COLUMNS = {"日期": "date", "开盘价(元)": "open"}
AR_PHI, AR_SIGMA, AR_DAYS, AR_SEED = 0.3, 0.01, 3000, 7
CONFIGS = ("price/minmax", "log_return/minmax", "log_return/standard")


def load_pingan():
    import pandas as pd

    if not PINGAN.is_file():
        return None
    df = pd.read_csv(PINGAN, encoding="gb18030").rename(columns=PINGAN_COLUMNS)
    df["date"] = pd.to_datetime(df["date"])
    return df[["date", "open"]].sort_values("date").reset_index(drop=True)


def load_msft():
    import pandas as pd

    df = pd.read_csv(MSFT).rename(columns={"Date": "date", "Open": "open"})
    df["date"] = pd.to_datetime(df["date"])
    return df[["date", "open"]].sort_values("date").reset_index(drop=True)


def make_ar1():
    """Prices with AR(1) log returns, and the log returns themselves."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(AR_SEED)
    eps = rng.normal(0.0, AR_SIGMA, AR_DAYS)
    r = np.empty(AR_DAYS)
    r[0] = eps[0]
    for t in range(1, AR_DAYS):
        r[t] = AR_PHI * r[t - 1] + eps[t]
    prices = 50.0 * np.exp(np.cumsum(r))
    dates = pd.bdate_range("2005-01-03", periods=AR_DAYS)
    return pd.DataFrame({"date": dates, "open": prices}), r


def ideal_rmse(frame, returns, test_dates) -> float:
    """RMSE of the best possible forecast (the generator's conditional mean) on ``test_dates``."""
    import numpy as np

    prices = frame["open"].to_numpy()
    idx = np.flatnonzero(frame["date"].isin(test_dates).to_numpy())
    best = prices[idx - 1] * np.exp(AR_PHI * returns[idx - 1] + AR_SIGMA**2 / 2)
    return float(np.sqrt(np.mean((prices[idx] - best) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--backend", default="fast", choices=("fast", "keras"))
    ap.add_argument("--datasets", default="pingan,msft,ar1")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig
    from lstm_core.data import prepare_data
    from lstm_core.evaluate import evaluate_model
    from lstm_core.train import train_network

    series = {}
    for name in args.datasets.split(","):
        if name == "pingan":
            df = load_pingan()
            if df is None:
                print(f"pingan: {PINGAN} absent, skipped")
                continue
            series[name] = (df, None)
        elif name == "msft":
            series[name] = (load_msft(), None)
        elif name == "ar1":
            series[name] = make_ar1()
        else:
            ap.error(f"unknown dataset {name!r}")
    eval_cfg = EvaluationConfig(val_fraction=0.15, test_fraction=0.15)
    training = TrainingConfig(epochs=args.epochs, batch_size=32, seed=args.seed)
    print(f"{args.epochs} epochs, backend {args.backend}, seed {args.seed}; "
          f"ar1: phi {AR_PHI}, sigma {AR_SIGMA}, {AR_DAYS} days")  # fmt: skip
    ratios: dict[str, list[float]] = {}
    for name, (df, returns) in series.items():
        for config in args.configs.split(","):
            transform, scaler = config.split("/")
            features = FeatureConfig(lookback=60, target_transform=transform, scaler=scaler)
            start = time.perf_counter()
            data = prepare_data(df, features, eval_cfg)
            model_cfg = ModelConfig(backend=args.backend)
            trained = train_network(model_cfg, training, data.train, data.val)
            evaluation = evaluate_model(trained.model, data, eval_cfg)
            m = evaluation.metrics
            ratio = m["test_rmse"] / m["naive_rmse"]
            ratios.setdefault(config, []).append(ratio)
            line = (
                f"{name:7s} {config:20s} test_rmse={m['test_rmse']:.4f} "
                f"naive_rmse={m['naive_rmse']:.4f} rmse/naive={ratio:.3f} "
                f"dm_p={m['dm_pvalue']:.3g}"
            )
            if returns is not None:
                ideal = ideal_rmse(df, returns, evaluation.predictions["date"])
                line += f" ideal_rmse={ideal:.4f} rmse/ideal={m['test_rmse'] / ideal:.3f}"
            print(f"{line} ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\n| config | mean rmse/naive over " + ", ".join(series) + " |\n|---|---|")
    for config, values in ratios.items():
        print(f"| {config} | {np.mean(values):.3f} |")
    best = min(ratios, key=lambda c: np.mean(ratios[c]))
    print(f"best: {best}")


if __name__ == "__main__":
    main()
