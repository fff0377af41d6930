import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lstm_core import scoring
from lstm_core.plots import plot_backtest, plot_live, plot_loss, plot_predictions


def _predictions(n=30):
    rng = np.random.default_rng(0)
    actual = 10 + np.cumsum(rng.normal(0, 0.1, n))
    pred = actual + rng.normal(0, 0.05, n)
    return pd.DataFrame(
        {
            "date": pd.bdate_range("2023-01-02", periods=n),
            "actual": actual,
            "predicted": pred,
            "naive": np.r_[actual[0], actual[:-1]],
            "lower_80": pred - 0.1,
            "upper_80": pred + 0.1,
            "lower_95": pred - 0.2,
            "upper_95": pred + 0.2,
        }
    )


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_figures_render_with_labels():
    folds = pd.DataFrame(
        {
            "fold": [1, 2],
            "test_start": pd.to_datetime(["2023-01-02", "2023-02-01"]),
            "test_end": pd.to_datetime(["2023-01-31", "2023-02-28"]),
            "rmse": [0.2, 0.3],
            "naive_rmse": [0.25, 0.28],
            "skill": [0.2, -0.07],
        }
    )
    figs = [
        plot_predictions(_predictions(), "000001.SZ"),
        plot_loss({"loss": [0.3, 0.2], "val_loss": [0.4, 0.35]}, "000001.SZ"),
        plot_backtest(folds, "000001.SZ"),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert "000001.SZ" in ax.get_title()
        assert ax.get_xlabel() and ax.get_ylabel()
        assert _png(fig).startswith(b"\x89PNG")
    assert "price" in figs[0].axes[0].get_ylabel() and "price" in figs[2].axes[0].get_ylabel()
    # both interval levels are shaded
    assert len(figs[0].axes[0].collections) == 2


def test_loss_plot_without_epochs_draws_no_empty_legend():
    import warnings

    from lstm_core.plots import plot_loss

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about a legend with no labels
        fig = plot_loss({"loss": [], "val_loss": []}, "TEST")
    assert fig.axes[0].get_legend() is None


_DAYS = pd.bdate_range("2024-01-01", periods=10)


def _live(log: dict) -> tuple:
    """`plot_live` of forecast-log rows against ten days of prices: (figure, next-day line)."""
    prices = pd.DataFrame({"date": _DAYS, "open": np.arange(10.0) + 10})
    fig = plot_live(
        scoring.match(pd.DataFrame(log), prices, "open", dated=True), prices, "X", "open"
    )
    [line] = [x for x in fig.axes[0].lines if x.get_label() == "next-day forecast"]
    return fig, line


def test_the_live_next_day_line_and_band_break_where_a_day_has_no_forecast():
    # next-day forecasts for the 2nd and 3rd, then none until the 9th and 10th
    fig, line = _live(
        {
            "made_on": _DAYS[[0, 1, 5, 6]],
            "step": 1,
            "expected_date": _DAYS[[1, 2, 6, 7]],
            "forecast": [11.0, 12.0, 16.0, 17.0],
            "lower_80": [10.0, 11.0, 15.0, 16.0],
            "upper_80": [12.0, 13.0, 17.0, 18.0],
        }
    )
    ax = fig.axes[0]
    y = np.asarray(line.get_ydata(), dtype=float)
    assert np.isnan(y).sum() == 1 and np.array_equal(y[~np.isnan(y)], [11.0, 12.0, 16.0, 17.0])
    assert np.flatnonzero(np.isnan(y)).tolist() == [2]  # between the 3rd and the 9th
    [band] = ax.collections  # the 80% band is drawn as two pieces, not across the break
    assert len(band.get_paths()) == 2
    assert _png(fig).startswith(b"\x89PNG")


def test_a_lone_next_day_forecast_and_its_bands_are_drawn_visibly():
    """A champion's single scored next-day forecast (and one with no neighbour): a line and
    a band of one point have no width, so each gets a marker and error bars."""
    from matplotlib.collections import LineCollection

    fig, line = _live(
        {
            "made_on": _DAYS[[1, 1, 5, 6]],
            "step": [1, 2, 1, 1],
            "expected_date": _DAYS[[2, 3, 6, 7]],
            "forecast": [12.5, 13.5, 16.5, 17.5],
            "lower_80": [12.0, 13.0, 16.0, 17.0],
            "upper_80": [13.0, 14.0, 17.0, 18.0],
            "lower_95": [11.0, 12.0, 15.0, 16.0],
            "upper_95": [14.0, 15.0, 18.0, 19.0],
        }
    )
    ax = fig.axes[0]
    assert line.get_marker() == "o"
    y = np.asarray(line.get_ydata(), dtype=float)
    marked = y[np.asarray(line.get_markevery(), dtype=bool)]
    assert marked.tolist() == [12.5]  # the lone one; the 7th and 8th make a line
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    spans = sorted(tuple(seg[:, 1]) for c in bars for seg in c.get_segments())
    assert spans == [(11.0, 14.0), (12.0, 13.0)]  # one error bar per level, at the lone one
    assert _png(fig).startswith(b"\x89PNG")
