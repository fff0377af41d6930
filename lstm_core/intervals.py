"""Prediction intervals: split conformal.

Scores ``|log(actual / forecast)|`` on the validation days (not trained on), one
set per forecast step; the band at level ``L`` is ``forecast * exp(+-q)``, ``q`` the
``ceil((n + 1) L)``-th smallest of ``n`` scores (the largest past ``n``, as MAPIE does). Relative
errors keep a band calibrated when the price level moves (docs/decisions.md, "Intervals")."""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_core.data import DataError

CALIBRATION_FORMAT = 1


def level_name(level: float) -> str:
    """0.8 -> '80', 0.95 -> '95', 0.975 -> '97.5' (used in column and metric names)."""
    return f"{level * 100:g}"


@dataclass(frozen=True)
class Intervals:
    """Bounds in prices, each ``(n, steps)``, keyed by level."""

    lower: dict[float, np.ndarray]
    upper: dict[float, np.ndarray]


def band_metrics(
    actual: np.ndarray, bands: Intervals | None, level: float, prefix: str = ""
) -> dict[str, float]:
    """Coverage, mean width and mean Winkler score (width + 2/alpha * distance outside) of the
    last step's band at ``level``."""
    name = level_name(level)
    keys = [f"{prefix}interval_{what}_{name}" for what in ("coverage", "width", "score")]
    if bands is None or np.size(actual) == 0:
        return dict.fromkeys(keys, float("nan"))
    lower, upper = bands.lower[level][:, -1], bands.upper[level][:, -1]
    outside = np.maximum(lower - actual, 0.0) + np.maximum(actual - upper, 0.0)
    winkler = upper - lower + 2.0 / (1.0 - level) * outside
    values = ((actual >= lower) & (actual <= upper), upper - lower, winkler)
    return {k: float(np.mean(v)) for k, v in zip(keys, values, strict=True)}


def price_scores(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Scores ``|log(actual / predicted)|`` (inf where a forecast is not positive)."""
    actual, predicted = (np.asarray(x, dtype=np.float64) for x in (actual, predicted))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(np.log(actual / predicted))
    return np.where(predicted > 0, ratio, np.inf)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) * level)``-th smallest of ``n`` scores (the largest if that exceeds n)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if len(s) == 0:
        raise ValueError("no calibration scores: conformal intervals need validation days")
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level {level} must lie strictly between 0 and 1")
    # the tolerance keeps e.g. 10 * 0.8 = 8.000000000000002 from rounding up to 9
    k = math.ceil((len(s) + 1) * level - 1e-9)
    return float(s[min(k, len(s)) - 1])


@dataclass(frozen=True)
class ConformalCalibration:
    """Scores per forecast step (``scores[k]``: (k+1)-day-ahead, oldest first), levels, and the
    last target day scored (ISO)."""

    scores: tuple[np.ndarray, ...]
    levels: tuple[float, ...]
    last_date: str

    @property
    def steps(self) -> int:
        return len(self.scores)

    def quantile(self, level: float, step: int) -> float:
        """The conformal quantile of 0-based forecast ``step``'s scores at ``level``."""
        return conformal_quantile(self.scores[step], level)

    def bands(self, point: np.ndarray, levels: Sequence[float] | None = None) -> Intervals:
        """Bands around point forecasts ``(..., steps)``: column k uses step k's quantile."""
        point = np.asarray(point, dtype=np.float64)
        lower, upper = {}, {}
        for level in self.levels if levels is None else levels:
            q = np.array([self.quantile(level, k) for k in range(point.shape[-1])])
            lower[level], upper[level] = point * np.exp(-q), point * np.exp(q)  # scores <= q
        return Intervals(lower=lower, upper=upper)

    def metrics(self) -> dict[str, float]:
        """``interval_q_<L>_day<k>``: the served band is forecast * exp(+-q)."""
        return {
            f"interval_q_{level_name(lv)}_day{k + 1}": self.quantile(lv, k)
            for lv in self.levels
            for k in range(self.steps)
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the scores (their quantiles are the ``metrics``)."""
        return {
            "format": CALIBRATION_FORMAT,
            "method": "split_conformal",
            "score": "abs(log(actual / forecast)); band = forecast * exp(+-quantile)",
            "last_date": self.last_date,
            "levels": list(self.levels),
            "scores": [[float(x) for x in s] for s in self.scores],
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "ConformalCalibration":
        if state.get("format") != CALIBRATION_FORMAT:
            raise ValueError(f"unsupported calibration format {state.get('format')!r}")
        return calibrate(state["scores"], [float(x) for x in state["levels"]], state["last_date"])


def calibrate(
    scores: Iterable[np.ndarray], levels: Sequence[float], last_date: Any
) -> ConformalCalibration:
    """Calibration from each forecast step's validation scores (:func:`price_scores`)."""
    per_step = tuple(np.array(s, dtype=np.float64) for s in scores)
    if not per_step or min(len(s) for s in per_step) == 0:
        raise DataError(
            f"the validation part is too short to score {len(per_step)}-day forecasts: raise "
            "evaluation.val_fraction or lower evaluation.forecast_days"
        )
    return ConformalCalibration(per_step, tuple(levels), str(np.datetime64(last_date, "D")))


def recalibrate(
    calibration: ConformalCalibration, new_scores: Sequence[np.ndarray], last_date: Any
) -> ConformalCalibration:
    """Rolling recalibration: each step's newer scores appended, the last calibration-sized
    window kept, so the band follows the latest days' errors."""
    if len(new_scores) != calibration.steps:
        raise ValueError(f"expected scores for {calibration.steps} step(s), got {len(new_scores)}")
    scores = [
        np.concatenate([old, np.asarray(new, dtype=np.float64)])[len(new) :]
        for old, new in zip(calibration.scores, new_scores, strict=True)
    ]
    return calibrate(scores, calibration.levels, last_date)
