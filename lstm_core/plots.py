"""Matplotlib figures (object API, no pyplot state): returned, never shown or saved."""

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lstm_core.data import DATE_COLUMN
from lstm_core.scoring import levels_of


def _axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(10.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return fig, ax


def _bands(ax: Any, x: Any, frame: pd.DataFrame, label: str) -> None:
    """Shade each level's ``lower_<L>``..``upper_<L>`` band that has values, widest lightest."""
    names = [n for n in reversed(levels_of(frame)) if frame[f"lower_{n}"].notna().any()]
    for i, name in enumerate(names):
        ax.fill_between(
            x, frame[f"lower_{name}"], frame[f"upper_{name}"], color="tab:green",
            alpha=0.15 + 0.15 * i, linewidth=0, label=label.format(name),
        )  # fmt: skip


def _lone_bands(ax: Any, rows: pd.DataFrame) -> None:
    """Each level's band at ``rows`` as error bars (a band of single days has no width)."""
    names = [n for n in reversed(levels_of(rows)) if rows[f"lower_{n}"].notna().any()]
    y = rows["forecast"].to_numpy(dtype=np.float64)
    for i, name in enumerate(names):
        below = y - rows[f"lower_{name}"].to_numpy(dtype=np.float64)
        above = rows[f"upper_{name}"].to_numpy(dtype=np.float64) - y
        ax.errorbar(
            rows["target_date"], y, yerr=[below, above], fmt="none", ecolor="tab:green",
            alpha=0.3 + 0.3 * i, capsize=4, linewidth=3 - i,
        )  # fmt: skip


def plot_predictions(predictions: pd.DataFrame, ticker: str, target: str = "open") -> Figure:
    """Actual vs predicted prices over the test dates, naive baseline, shaded intervals."""
    fig, ax = _axes(f"{ticker}: {target} price, test period", "date", f"{target} (price)")
    dates = pd.to_datetime(predictions[DATE_COLUMN])
    _bands(ax, dates, predictions, "{}% interval")
    ax.plot(dates, predictions["actual"], color="black", linewidth=1.2, label=f"actual {target}")
    ax.plot(
        dates, predictions["predicted"], color="tab:green", linewidth=1.2, label="LSTM forecast"
    )
    ax.plot(
        dates, predictions["naive"], color="tab:orange", linewidth=0.9, linestyle="--",
        label="naive (last value)",
    )  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    return fig


def plot_loss(history: dict[str, list[float]], ticker: str) -> Figure:
    """Training and validation loss (MSE on scaled targets) per epoch."""
    fig, ax = _axes(f"{ticker}: loss per epoch", "epoch", "MSE (scaled target)")
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        if values := history.get(key):
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(alpha=0.3)
    if ax.lines:  # no epochs run (training.epochs 0): nothing to label
        ax.legend(loc="best")
    return fig


def plot_backtest(folds: pd.DataFrame, ticker: str) -> Figure:
    """Per-fold RMSE of the model and of the naive forecast, with the skill annotated."""
    fig, ax = _axes(f"{ticker}: walk-forward backtest", "fold (test period)", "RMSE (price)")
    x = np.arange(len(folds))
    width = 0.38
    ax.bar(x - width / 2, folds["rmse"], width, color="tab:green", label="LSTM")
    ax.bar(x + width / 2, folds["naive_rmse"], width, color="tab:orange", label="naive")
    for xi, row in zip(x, folds.itertuples(index=False), strict=True):
        ax.annotate(
            f"skill {row.skill:+.2f}", (xi, max(row.rmse, row.naive_rmse)), xytext=(0, 4),
            textcoords="offset points", ha="center", fontsize=9,
        )  # fmt: skip
    labels = [
        f"fold {r.fold}\n{pd.Timestamp(r.test_start):%Y-%m-%d}\nto {pd.Timestamp(r.test_end):%Y-%m-%d}"
        for r in folds.itertuples(index=False)
    ]
    ax.set_xticks(x, labels)
    top = float(np.nanmax(np.r_[folds["rmse"], folds["naive_rmse"], 0.0]))
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.legend(loc="best")
    return fig


def _broken(rows: pd.DataFrame) -> pd.DataFrame:
    """Scored rows with a NaN row wherever the next target is not the next stored day, so a
    line and a band stop there instead of bridging days without a forecast."""
    rows = rows.sort_values("target_index", ignore_index=True)
    jumps = np.flatnonzero(np.diff(rows["target_index"].to_numpy()) > 1)
    if not len(jumps):
        return rows
    # one row after each jump, dated as the day before it, every value NaN
    blank = rows.iloc[jumps][["target_date", "target_index"]]
    blank = blank.assign(target_index=blank["target_index"] + 0.5)
    return pd.concat([rows, blank]).sort_values("target_index", ignore_index=True)


def plot_live(scored: pd.DataFrame, prices: pd.DataFrame, ticker: str, target: str) -> Figure:
    """Logged forecasts (:func:`lstm_core.scoring.match`) against the prices that arrived: next-day
    ones as a line with bands (broken where a stored day has none), longer steps as dots."""
    fig, ax = _axes(f"{ticker}: live forecasts vs realized {target}", "", f"{target} price")
    done = scored[scored["scored"]].sort_values("target_date")
    if done.empty:
        return fig
    start = done["target_date"].min() - pd.offsets.BDay(5)
    real = prices[pd.to_datetime(prices[DATE_COLUMN]) >= start]
    ax.plot(pd.to_datetime(real[DATE_COLUMN]), real[target], color="black", label="actual")
    one = _broken(done[done["step"] == 1])
    _bands(ax, one["target_date"], one, "{}% band (next day)")
    # a forecast with none the day before or after draws no line or band: a marker and error bars
    has = one["forecast"].notna()
    lone = has & ~has.shift(1, fill_value=False) & ~has.shift(-1, fill_value=False)
    ax.plot(
        one["target_date"], one["forecast"], color="tab:blue", label="next-day forecast",
        marker="o", markersize=4, markevery=lone.tolist(),
    )  # fmt: skip
    _lone_bands(ax, one[lone])
    later = done[done["step"] > 1]
    if not later.empty:
        ax.scatter(
            later["target_date"], later["forecast"], s=10, color="tab:orange", alpha=0.6,
            label="forecasts 2+ days ahead",
        )  # fmt: skip
    ax.legend(loc="best")
    return fig
