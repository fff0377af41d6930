"""Matplotlib figures (object API, no pyplot state): returned, never shown or saved."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lstm_core.data import DATE_COLUMN

_SIZE = (10.0, 5.0)


def _levels_in(predictions: pd.DataFrame) -> list[str]:
    """Interval level names ('80', '95', ...) present as lower_/upper_ columns, widest first."""
    names = [m.group(1) for c in predictions.columns if (m := re.fullmatch(r"lower_(.+)", c))]
    names = [
        n for n in names if f"upper_{n}" in predictions and predictions[f"lower_{n}"].notna().any()
    ]
    return sorted(names, key=float, reverse=True)


def plot_predictions(predictions: pd.DataFrame, ticker: str, target: str = "open") -> Figure:
    """Actual vs predicted prices over the test dates, naive baseline, shaded intervals."""
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    dates = pd.to_datetime(predictions[DATE_COLUMN])
    for i, name in enumerate(_levels_in(predictions)):
        ax.fill_between(
            dates,
            predictions[f"lower_{name}"],
            predictions[f"upper_{name}"],
            color="tab:green",
            alpha=0.15 + 0.15 * i,
            linewidth=0,
            label=f"{name}% interval",
        )
    ax.plot(dates, predictions["actual"], color="black", linewidth=1.2, label=f"actual {target}")
    ax.plot(
        dates, predictions["predicted"], color="tab:green", linewidth=1.2, label="LSTM forecast"
    )
    if "naive" in predictions:
        ax.plot(
            dates,
            predictions["naive"],
            color="tab:orange",
            linewidth=0.9,
            linestyle="--",
            label="naive (last value)",
        )
    ax.set_title(f"{ticker}: {target} price, test period")
    ax.set_xlabel("date")
    ax.set_ylabel(f"{target} (price)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    return fig


def plot_loss(history: dict[str, list[float]], ticker: str) -> Figure:
    """Training and validation loss (MSE on scaled targets) per epoch."""
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        values = history.get(key) or []
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_title(f"{ticker}: loss per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (scaled target)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def plot_residuals(predictions: pd.DataFrame, ticker: str, bins: int = 40) -> Figure:
    """Histogram of residuals (actual - predicted) in price units, naive residuals overlaid."""
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    resid = predictions["actual"] - predictions["predicted"]
    ax.hist(resid, bins=bins, color="tab:green", alpha=0.7, label="LSTM")
    if "naive" in predictions:
        ax.hist(
            predictions["actual"] - predictions["naive"],
            bins=bins,
            histtype="step",
            color="tab:orange",
            linewidth=1.2,
            label="naive",
        )
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_title(f"{ticker}: residuals on the test period (mean {resid.mean():.3f})")
    ax.set_xlabel("actual - predicted (price)")
    ax.set_ylabel("days")
    ax.legend(loc="best")
    return fig


def plot_backtest(folds: pd.DataFrame, ticker: str) -> Figure:
    """Per-fold RMSE of the model and of the naive forecast, with the skill annotated."""
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(folds))
    width = 0.38
    ax.bar(x - width / 2, folds["rmse"], width, color="tab:green", label="LSTM")
    ax.bar(x + width / 2, folds["naive_rmse"], width, color="tab:orange", label="naive")
    top = float(np.nanmax(np.r_[folds["rmse"], folds["naive_rmse"], 0.0]))
    for xi, row in zip(x, folds.itertuples(index=False), strict=True):
        ax.annotate(
            f"skill {row.skill:+.2f}",
            (xi, max(row.rmse, row.naive_rmse)),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    labels = [
        f"fold {r.fold}\n{pd.Timestamp(r.test_start):%Y-%m-%d}\nto {pd.Timestamp(r.test_end):%Y-%m-%d}"
        for r in folds.itertuples(index=False)
    ]
    ax.set_xticks(x, labels)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.set_title(f"{ticker}: walk-forward backtest")
    ax.set_xlabel("fold (test period)")
    ax.set_ylabel("RMSE (price)")
    ax.legend(loc="best")
    return fig


def plot_live(scored: pd.DataFrame, prices: pd.DataFrame, ticker: str, target: str) -> Figure:
    """Logged next-day forecasts with their bands against the prices that arrived.

    ``scored`` is the matched log (lstm_core.scoring.match); step-1 forecasts are drawn as a
    line with their bands, longer steps as dots, the realized prices as a black line.
    """
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    done = scored[scored["scored"]].sort_values("target_date")
    if not done.empty:
        first = done["target_date"].min() - pd.offsets.BDay(5)
        real = prices[pd.to_datetime(prices[DATE_COLUMN]) >= first]
        ax.plot(pd.to_datetime(real[DATE_COLUMN]), real[target], color="black", label="actual")
        one = done[done["step"] == 1]
        for i, name in enumerate(_levels_in(one)):
            ax.fill_between(
                one["target_date"],
                one[f"lower_{name}"],
                one[f"upper_{name}"],
                color="tab:green",
                alpha=0.15 + 0.15 * i,
                linewidth=0,
                label=f"{name}% band (next day)",
            )
        ax.plot(one["target_date"], one["forecast"], color="tab:blue", label="next-day forecast")
        later = done[done["step"] > 1]
        if not later.empty:
            ax.scatter(
                later["target_date"],
                later["forecast"],
                s=10,
                color="tab:orange",
                alpha=0.6,
                label="forecasts 2+ days ahead",
            )
        ax.legend(loc="best")
    ax.set_title(f"{ticker}: live forecasts vs realized {target}")
    ax.set_ylabel(f"{target} price")
    return fig
