"""Tiny projects for flow and tracking tests: a synthetic price file and a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TINY_CONFIG = """\
tracking:
  uri: sqlite:///mlflow.db
  experiment: tests
registry:
  model_name: "test-{ticker}"
  promotion:
    max_worse_than_naive: 10.0   # a one-epoch model is far from naive; test the mechanics
data:
  sources: [prices/TEST.csv]
  ticker: TEST
features:
  lookback: 5
model:
  layers: 1
  units: 4
  dropout: 0.1
  backend: keras
training:
  epochs: 1
  batch_size: 16
evaluation:
  mc_samples: 4
  backtest_folds: 1
  backtest_epochs: 1
  forecast_days: 3
"""


def price_frame(n: int, seed: int = 0, start: str = "2020-01-01") -> pd.DataFrame:
    """A positive random walk in the Yahoo layout, business days.

    The first n rows of a longer frame equal the shorter frame (same seed), so later
    slices of it are genuinely "newer days" of the same series.
    """
    full = 2000
    if n > full:
        raise ValueError(f"at most {full} rows")
    rng = np.random.default_rng(seed)
    close = (50 * np.exp(np.cumsum(rng.normal(0, 0.01, full))))[:n]
    open_ = close * np.exp(rng.normal(0, 0.003, full)[:n])
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    return pd.DataFrame(
        {
            "Date": pd.bdate_range(start, periods=n).strftime("%Y-%m-%d"),
            "Open": open_.round(4),
            "High": high.round(4),
            "Low": low.round(4),
            "Close": close.round(4),
            "Volume": rng.integers(1_000, 10_000, full)[:n],
        }
    )


def write_prices(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A project folder with mlflow.yaml (tiny model) and 120 days of prices for TEST."""
    (tmp_path / "mlflow.yaml").write_text(TINY_CONFIG, encoding="utf-8")
    write_prices(tmp_path / "prices" / "TEST.csv", price_frame(120))
    return tmp_path


@pytest.fixture
def tiny_settings(tiny_project: Path):
    from pipelines.config import load_settings

    return load_settings(tiny_project / "mlflow.yaml", env={})
