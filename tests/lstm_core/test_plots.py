import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lstm_core.plots import plot_backtest, plot_loss, plot_predictions, plot_residuals


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
        plot_residuals(_predictions(), "000001.SZ"),
        plot_backtest(folds, "000001.SZ"),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert "000001.SZ" in ax.get_title()
        assert ax.get_xlabel() and ax.get_ylabel()
        assert _png(fig).startswith(b"\x89PNG")
    assert "price" in figs[0].axes[0].get_ylabel() and "price" in figs[2].axes[0].get_xlabel()
    assert "price" in figs[3].axes[0].get_ylabel()
    # both interval levels are shaded
    assert len(figs[0].axes[0].collections) == 2


def test_loss_plot_without_epochs_draws_no_empty_legend():
    import warnings

    from lstm_core.plots import plot_loss

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about a legend with no labels
        fig = plot_loss({"loss": [], "val_loss": []}, "TEST")
    assert fig.axes[0].get_legend() is None
