"""Prediction intervals: split conformal (the default) and Monte-Carlo dropout.

Split conformal: the nonconformity scores are the relative price errors
``|log(actual / forecast)|`` of the model on the validation days (which it did not train
on), one set per forecast step; the band at level ``L`` is ``forecast * exp(+-q)`` with
``q`` the finite-sample quantile ``ceil((n+1) L) / n`` of those scores (MAPIE's convention
when ``n`` is too small for ``L``: the largest score).  Relative, not absolute, errors: a
price that doubles after the validation days keeps a calibrated band (docs/decisions.md,
"Intervals").  New days recalibrate it on the most recent validation-sized window
(:func:`recalibrate`).

MC dropout: each of N stochastic passes keeps dropout active (``model(x, training=True)``); every
pass is converted to prices first (so cumulative log returns stay consistent) and the
interval bounds are the per-window quantiles of those price paths.

If the model has no active dropout (``ModelConfig.dropout == 0``) all passes are
identical and the intervals collapse onto the point forecast (zero width, coverage ~0).
That is deliberate: no fallback is invented; train with dropout > 0 for intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


# ----------------------------------------------------------------------------- split conformal

CALIBRATION_FORMAT = 1


def price_scores(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Nonconformity scores ``|log(actual / predicted)|`` (inf where a forecast is not positive)."""
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(np.log(actual / predicted))
    return np.where(predicted > 0, ratio, np.inf)


def price_band(point: np.ndarray, q: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """``(point * exp(-q), point * exp(q))``: the band whose scores are at most ``q``."""
    point = np.asarray(point, dtype=np.float64)
    return point * np.exp(-np.asarray(q)), point * np.exp(q)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) * level)``-th smallest of ``n`` scores (the largest if that exceeds n)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = len(s)
    if n == 0:
        raise ValueError("no calibration scores: conformal intervals need validation days")
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level {level} must lie strictly between 0 and 1")
    # the tolerance keeps e.g. 10 * 0.8 = 8.000000000000002 from rounding up to 9
    k = math.ceil((n + 1) * level - 1e-9)
    return float(s[min(k, n) - 1])


@dataclass(frozen=True)
class ConformalCalibration:
    """Scores (:func:`price_scores`) per forecast step, oldest first, and the last day scored.

    ``scores[k]`` holds the (k+1)-day-ahead errors; ``levels`` are the configured levels
    (the default ones when serving); ``last_date`` is the last target day scored (ISO).
    """

    scores: tuple[np.ndarray, ...]
    levels: tuple[float, ...]
    last_date: str

    @property
    def steps(self) -> int:
        return len(self.scores)

    def quantile(self, level: float, step: int) -> float:
        """The conformal quantile of 0-based forecast ``step``'s scores at ``level``."""
        if step >= self.steps:
            raise ValueError(
                f"intervals are calibrated for up to {self.steps} day(s) ahead, not {step + 1}; "
                "raise evaluation.forecast_days and retrain"
            )
        return conformal_quantile(self.scores[step], level)

    def bands(self, point: np.ndarray, levels: Sequence[float] | None = None) -> Intervals:
        """Bands around point forecasts ``(..., steps)``: column k uses step k's quantile."""
        point = np.asarray(point, dtype=np.float64)
        lower, upper = {}, {}
        for level in self.levels if levels is None else levels:
            q = np.array([self.quantile(level, k) for k in range(point.shape[-1])])
            lower[level], upper[level] = price_band(point, q)
        return Intervals(lower=lower, upper=upper, median=point)

    def metrics(self) -> dict[str, float]:
        """``interval_q_<L>_day<k>``: the served band is forecast * exp(+-q)."""
        return {
            f"interval_q_{level_name(lv)}_day{k + 1}": self.quantile(lv, k)
            for lv in self.levels
            for k in range(self.steps)
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the scores, and their quantiles per level and step for reading."""
        return {
            "format": CALIBRATION_FORMAT,
            "method": "split_conformal",
            "score": "abs(log(actual / forecast)); band = forecast * exp(+-quantile)",
            "last_date": self.last_date,
            "levels": list(self.levels),
            "quantiles": {
                level_name(lv): [self.quantile(lv, k) for k in range(self.steps)]
                for lv in self.levels
            },
            "scores": [[float(x) for x in s] for s in self.scores],
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ConformalCalibration:
        if state.get("format") != CALIBRATION_FORMAT:
            raise ValueError(f"unsupported calibration format {state.get('format')!r}")
        calibration = cls(
            scores=tuple(np.asarray(s, dtype=np.float64) for s in state["scores"]),
            levels=tuple(float(x) for x in state["levels"]),
            last_date=str(state["last_date"]),
        )
        if calibration.to_dict()["quantiles"] != state.get("quantiles"):
            raise ValueError("calibration quantiles disagree with its scores")
        return calibration


def calibrate(
    actual: np.ndarray, predicted: np.ndarray, levels: Sequence[float], last_date: Any
) -> ConformalCalibration:
    """Calibration from validation prices and forecasts ``(n, steps)`` (one row per window)."""
    errors = price_scores(actual, predicted)
    if errors.ndim != 2 or len(errors) == 0:
        raise ValueError("conformal calibration needs at least one validation window")
    return ConformalCalibration(
        scores=tuple(np.ascontiguousarray(errors[:, k]) for k in range(errors.shape[1])),
        levels=tuple(levels),
        last_date=str(np.datetime64(last_date, "D")),
    )


def recalibrate(
    calibration: ConformalCalibration, new_scores: Sequence[np.ndarray], last_date: Any
) -> ConformalCalibration:
    """Online update: append each step's newer scores, keep the most recent window of each.

    The window per step keeps its calibration size (validation-sized), so the band follows
    the latest ``n`` days' errors: a rolling split-conformal recalibration.
    """
    if len(new_scores) != calibration.steps:
        raise ValueError(f"expected scores for {calibration.steps} step(s), got {len(new_scores)}")
    merged = [
        np.concatenate([old, np.asarray(new, dtype=np.float64)])
        for old, new in zip(calibration.scores, new_scores, strict=True)
    ]
    scores = tuple(
        m[len(m) - len(old) :] for m, old in zip(merged, calibration.scores, strict=True)
    )
    return ConformalCalibration(
        scores=scores, levels=calibration.levels, last_date=str(np.datetime64(last_date, "D"))
    )


def width(lower: np.ndarray, upper: np.ndarray) -> float:
    """Mean band width in prices."""
    return float(np.mean(np.asarray(upper) - np.asarray(lower))) if np.size(lower) else float("nan")


def interval_score(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float) -> float:
    """Mean Winkler interval score: width + (2 / alpha) * distance outside the band (lower is better)."""
    if np.size(actual) == 0:
        return float("nan")
    alpha = 1.0 - level
    below = np.maximum(lower - actual, 0.0)
    above = np.maximum(actual - upper, 0.0)
    return float(np.mean(upper - lower + (2.0 / alpha) * (below + above)))
