"""Prediction intervals by Monte-Carlo dropout.

Each of N stochastic passes keeps dropout active (``model(x, training=True)``); every
pass is converted to prices first (so cumulative log returns stay consistent) and the
interval bounds are the per-window quantiles of those price paths.

If the model has no active dropout (``ModelConfig.dropout == 0``) all passes are
identical and the intervals collapse onto the point forecast (zero width, coverage ~0).
That is deliberate: no fallback is invented; train with dropout > 0 for intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstm_core.data import Preprocessor


def level_name(level: float) -> str:
    """0.8 -> '80', 0.95 -> '95', 0.975 -> '97.5' (used in column and metric names)."""
    return f"{level * 100:g}"


@dataclass(frozen=True)
class Intervals:
    """Quantile bounds in prices, each ``(n, horizon)``, keyed by level."""

    lower: dict[float, np.ndarray]
    upper: dict[float, np.ndarray]
    median: np.ndarray


def mc_dropout_samples(
    model: object, X: np.ndarray, n_samples: int, seed: int | None = None, batch_size: int = 1024
) -> np.ndarray:
    """Stochastic outputs ``(n_samples, n, horizon)`` (scaled) with dropout active.

    Runs in the Numba engine (masks drawn from ``seed``) when it implements the model, else
    through Keras: ``seed`` re-seeds Keras' global RNGs, and each Dropout layer's own seed
    generator advances with every call, so repeated calls on one model differ.
    """
    from lstm_core import engine

    if engine.eligible(model) is None:
        return engine.mc_dropout_samples(model, X, n_samples, 0 if seed is None else seed)
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    X = np.ascontiguousarray(X, dtype=np.float32)
    out = []
    for _ in range(n_samples):
        parts = [
            np.asarray(model(X[i : i + batch_size], training=True))  # type: ignore[operator]
            for i in range(0, len(X), batch_size)
        ]
        out.append(np.concatenate(parts, axis=0))
    return np.stack(out)


def quantile_bounds(paths: np.ndarray, levels: Sequence[float]) -> Intervals:
    """Central intervals from sample paths ``(n_samples, ...)`` in prices."""
    lower, upper = {}, {}
    for level in levels:
        alpha = (1.0 - level) / 2.0
        lower[level] = np.quantile(paths, alpha, axis=0)
        upper[level] = np.quantile(paths, 1.0 - alpha, axis=0)
    return Intervals(lower=lower, upper=upper, median=np.median(paths, axis=0))


def mc_dropout_intervals(
    model: object,
    X: np.ndarray,
    anchor: np.ndarray,
    preprocessor: Preprocessor,
    levels: Sequence[float] = (0.8, 0.95),
    n_samples: int = 30,
    seed: int | None = None,
) -> Intervals:
    """Price intervals for windows ``X`` ``(n, lookback, n_features)`` with anchors ``(n,)``."""
    scaled = mc_dropout_samples(model, X, n_samples, seed)  # (S, n, horizon)
    paths = preprocessor.to_prices(scaled, np.broadcast_to(anchor, scaled.shape[:-1]))
    return quantile_bounds(paths, levels)


def coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of ``actual`` values inside ``[lower, upper]``."""
    if np.size(actual) == 0:
        return float("nan")
    return float(np.mean((actual >= lower) & (actual <= upper)))
