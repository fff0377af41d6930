"""Coverage and mean width of every interval method, per level, on the test days of three series.

Series: Ping An Bank (../shared/data/平安银行.csv, skipped when absent), the bundled sample
data/msft.csv, and a synthetic AR(1) log-return series with Gaussian noise whose ideal band
is known (printed as "ideal").  Chronological 70/15/15 split, the default configuration
(lookback 60, opening price, log returns, minmax, 4 x LSTM(50) + Dropout(0.2)).

Methods (one trained model per series, all bands around its forecasts):
  conformal          the default: validation scores |log(actual / forecast)|, split-conformal
                     quantile q, band forecast * exp(+-q) (lstm_core.evaluate.evaluate_model)
  conformal+online   the same band recalibrated day by day on the most recent
                     validation-sized window (lstm_core.intervals.recalibrate), as live
  conformal day N    the served N-day recursive forecast (lstm_core.forecast), day N
  conformal_absolute the same with absolute price errors, band forecast +- q (measured here only)
  naive              the last price's band built the same way as "conformal"
MC-dropout bands, and conformal scores normalised by their spread, were dropped: their figures
are in docs/decisions.md ("Intervals").

Coverage does not depend on machine load; a reduced --epochs changes the model, so say so.
Usage:
    python benchmarks/bench_intervals.py [--epochs 20] [--series pingan,msft,synthetic]
        [--pingan ../shared/data/平安银行.csv]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig  # noqa: E402
from lstm_core.data import prepare_data, split_frame  # noqa: E402
from lstm_core.evaluate import evaluate_model, predict_prices  # noqa: E402
from lstm_core.forecast import calibrate_recursive, recursive_errors  # noqa: E402
from lstm_core.intervals import (  # noqa: E402
    calibrate,
    conformal_quantile,
    level_name,
    price_scores,
    recalibrate,
)
from lstm_core.model import build_model  # noqa: E402
from lstm_core.train import train_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PINGAN = ROOT.parent / "shared" / "data" / "平安银行.csv"
MSFT = ROOT / "data" / "msft.csv"
COLUMNS = ["date", "open", "high", "low", "close", "volume"]


def read_prices(path: Path) -> pd.DataFrame:
    """One ticker's prices through the project's ingest reader (the store's layout)."""
    from pipelines.ingest import read_price_file

    df = read_price_file(path, ticker="BENCH").table.to_pandas(date_as_object=False)
    df["date"] = pd.to_datetime(df["date"])
    return df[COLUMNS].sort_values("date").reset_index(drop=True)


def synthetic(n: int = 5000, phi: float = 0.3, sigma: float = 0.01, seed: int = 7):
    """AR(1) log returns r_t = phi r_{t-1} + e_t, e_t ~ N(0, sigma); prices from 100.

    Returns the frame and the ideal one-day band: p_t exp(phi r_t +- z sigma).
    """
    rng = np.random.default_rng(seed)
    r = np.zeros(n)
    e = rng.normal(0.0, sigma, n)
    for t in range(1, n):
        r[t] = phi * r[t - 1] + e[t]
    price = 100.0 * np.exp(np.cumsum(r))
    frame = pd.DataFrame({"date": pd.bdate_range("2010-01-04", periods=n), "open": price})
    for col in ("high", "low", "close"):
        frame[col] = price
    frame["volume"] = 1.0

    def ideal(anchor_index: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        z = stats.norm.ppf(0.5 + level / 2.0)
        centre = price[anchor_index] * np.exp(phi * r[anchor_index])
        return centre * np.exp(-z * sigma), centre * np.exp(z * sigma)

    return frame, ideal


def row(series: str, method: str, level: float, y, lower, upper, note: str = "") -> dict:
    return {
        "series": series,
        "method": method,
        "level": level_name(level),
        "coverage": float(np.mean((y >= lower) & (y <= upper))),
        "mean_width": float(np.mean(upper - lower)),
        "note": note,
    }


def bench_series(name: str, df: pd.DataFrame, args: argparse.Namespace, ideal=None) -> list[dict]:
    features = FeatureConfig()
    eval_cfg = EvaluationConfig(
        val_fraction=0.15, test_fraction=0.15, interval_levels=args.levels, backtest_folds=0
    )
    data = prepare_data(df, features, eval_cfg)
    model = build_model(ModelConfig(backend=args.backend), data.lookback, data.n_features, 1, 42)
    training = TrainingConfig(epochs=args.epochs, seed=42)
    trained = train_model(model, data.train.X, data.train.y, data.val.X, data.val.y, training).model
    test, val = data.test, data.val
    y, anchor = test.actual[:, 0], test.anchor
    pred = predict_prices(trained, test, data.preprocessor)[:, 0]
    val_pred = predict_prices(trained, val, data.preprocessor)[:, 0]
    rows = []
    tail = f"val {len(val)} / test {len(test)} days, {test.target_dates[0, 0]!s:.10}.."

    # the online band: the most recent len(val) scores before each test day
    calibration = calibrate(
        [price_scores(val.actual[:, 0], val_pred)], args.levels, val.target_dates[-1, 0]
    )
    test_scores = price_scores(y, pred)
    # the served recursive forecast, day N (calibrated on the validation rows only)
    frames = split_frame(df, eval_cfg)
    days = args.days
    rec_cal = calibrate_recursive(trained, data.preprocessor, frames, days, args.levels)
    shipped = evaluate_model(trained, data, eval_cfg, rec_cal)  # the served next-day band
    conformal = shipped.metrics
    rec_test = recursive_errors(
        trained, data.preprocessor, frames.frame, frames.val_end, len(frames.frame), days
    )[-1]
    rec_width = data.target_prices[frames.val_end :]  # width quoted at the test days' prices
    abs_scores = np.abs(val.actual[:, 0] - val_pred)
    # the regime of each part: volatility and level (a change explains a miss)
    logret = np.diff(np.log(data.target_prices))
    for part, (a, b) in (
        ("val", (frames.train_end, frames.val_end)),
        ("test", (frames.val_end, len(df))),
    ):
        print(
            f"{name} {part}: daily log-return sd {logret[a - 1 : b - 1].std():.4f}, "
            f"mean price {data.target_prices[a:b].mean():.2f}",
            flush=True,
        )

    for level in args.levels:
        ln = level_name(level)
        m = conformal
        band = shipped.predictions[f"lower_{ln}"], shipped.predictions[f"upper_{ln}"]
        rows.append(row(name, "conformal", level, y, *band, tail))
        assert abs(rows[-1]["coverage"] - m[f"interval_coverage_{ln}"]) < 1e-12
        online, hits, widths = calibration, [], []
        for i, err in enumerate(test_scores):
            q = online.quantile(level, 0)
            hits.append(err <= q)
            widths.append(pred[i] * (np.exp(q) - np.exp(-q)))
            online = recalibrate(online, [np.array([err])], test.target_dates[i, 0])
        rows.append(
            {
                "series": name,
                "method": "conformal+online",
                "level": ln,
                "coverage": float(np.mean(hits)),
                "mean_width": float(np.mean(widths)),
                "note": "",
            }
        )
        q_day = rec_cal.quantile(level, days - 1)
        rows.append(
            {
                "series": name,
                "method": f"conformal day {days}",
                "level": ln,
                "coverage": float(np.mean(rec_test <= q_day)),
                "mean_width": float(np.mean(rec_width)) * (np.exp(q_day) - np.exp(-q_day)),
                "note": f"{len(rec_test)} test targets, width at test prices",
            }
        )
        qa = conformal_quantile(abs_scores, level)
        rows.append(row(name, "conformal_absolute", level, y, pred - qa, pred + qa))
        rows.append(
            {
                "series": name,
                "method": "naive",
                "level": ln,
                "coverage": m[f"naive_interval_coverage_{ln}"],
                "mean_width": m[f"naive_interval_width_{ln}"],
                "note": "",
            }
        )
        if ideal is not None:
            lo, hi = ideal(test.anchor_index, level)
            rows.append(row(name, "ideal", level, y, lo, hi, "the true conditional band"))
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    naive_rmse = float(np.sqrt(np.mean((anchor - y) ** 2)))
    print(f"{name}: test RMSE {rmse:.4f} (naive {naive_rmse:.4f}), {tail}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--series", default="pingan,msft,synthetic")
    parser.add_argument("--levels", default="0.8,0.95")
    parser.add_argument("--days", type=int, default=5, help="the recursive forecast day scored")
    parser.add_argument("--backend", default=ModelConfig().backend)
    parser.add_argument("--pingan", type=Path, default=PINGAN, help="the Ping An Bank CSV")
    args = parser.parse_args()
    args.levels = tuple(float(x) for x in args.levels.split(","))
    rows: list[dict] = []
    for name in args.series.split(","):
        if name == "pingan":
            if not args.pingan.exists():
                print(f"pingan: skipped ({args.pingan} is absent)")
                continue
            rows += bench_series("pingan", read_prices(args.pingan), args)
        elif name == "msft":
            rows += bench_series("msft", read_prices(MSFT), args)
        elif name == "synthetic":
            frame, ideal = synthetic()
            rows += bench_series("synthetic", frame, args, ideal)
        else:
            raise SystemExit(f"unknown series {name!r}")
    table = pd.DataFrame(rows)
    print(f"\nepochs {args.epochs}, backend {args.backend}, levels {args.levels}")
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
