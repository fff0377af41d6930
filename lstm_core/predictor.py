"""A fitted model bundled with its preprocessor: predict, forecast, save, load."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lstm_core.config import FeatureConfig
from lstm_core.data import DATE_COLUMN, DataError, Preprocessor
from lstm_core.forecast import next_business_days, recalibrate_recursive, recursive_forecast
from lstm_core.intervals import ConformalCalibration, level_name, quantile_bounds

MODEL_FILE = "model.keras"
PREPROCESSOR_FILE = "preprocessor.json"
FEATURES_FILE = "features.json"
CALIBRATION_FILE = "calibration.json"
DEFAULT_LEVELS = (0.8, 0.95)


def model_input(history: Any, preprocessor: Preprocessor) -> pd.DataFrame:
    """``date`` and the feature columns of ``history``, checked and coerced, in date order.

    What a user has is enough: other columns are dropped, columns may come in any order,
    ``date`` may be datetimes or ISO strings, numbers may be ints or strings of numbers.
    Raises DataError naming a missing or unreadable column, or how many rows are needed.
    """
    frame = pd.DataFrame(history)
    needed = [DATE_COLUMN, *preprocessor.feature_cfg.columns]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(
            f"input is missing column(s) {missing}: the model reads {needed} "
            f"(other columns are ignored); got {[str(c) for c in frame.columns]}"
        )
    frame = frame[needed].copy()
    if len(frame) < preprocessor.rows_needed:
        raise DataError(
            f"history has {len(frame)} rows, needs at least {preprocessor.rows_needed} "
            f"consecutive days (lookback {preprocessor.feature_cfg.lookback}"
            f" + {preprocessor.offset} for the {preprocessor.feature_cfg.target_transform} transform)"
        )
    dates = frame[DATE_COLUMN]
    if not pd.api.types.is_datetime64_any_dtype(dates):
        try:
            dates = pd.to_datetime(dates, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise DataError(f"column {DATE_COLUMN!r}: not ISO dates or datetimes ({exc})") from None
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)  # a trading day is a calendar date
    frame[DATE_COLUMN] = dates
    for col in preprocessor.feature_cfg.columns:
        try:
            frame[col] = pd.to_numeric(frame[col]).astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise DataError(f"column {col!r}: not numbers ({exc})") from None
    return frame.sort_values(DATE_COLUMN, kind="stable", ignore_index=True)


class Forecaster:
    """Keras model + fitted Preprocessor (+ its FeatureConfig), ready to serve.

    With a conformal ``calibration`` the intervals are its bands; without one, MC dropout.
    """

    def __init__(
        self,
        model: Any,
        preprocessor: Preprocessor,
        calibration: ConformalCalibration | None = None,
    ) -> None:
        self.model = model
        self.preprocessor = preprocessor
        self.calibration = calibration
        self._infer: Any = None  # compiled inference function, built on first use

    def _levels(self, levels: Sequence[float] | None) -> Sequence[float]:
        if levels is not None:
            return levels
        return self.calibration.levels if self.calibration is not None else DEFAULT_LEVELS

    def recalibrated(self, history: pd.DataFrame) -> Forecaster:
        """A copy whose calibration also scores ``history``'s days after it (rolling window)."""
        if self.calibration is None:
            return self
        history = model_input(history, self.preprocessor)
        calibration = recalibrate_recursive(
            self.model, self.preprocessor, self.calibration, history
        )
        return Forecaster(self.model, self.preprocessor, calibration)

    @property
    def feature_cfg(self) -> FeatureConfig:
        return self.preprocessor.feature_cfg

    def _deterministic(self, x: np.ndarray) -> np.ndarray:
        # a traced tf.function: calling the LSTM eagerly costs much more per window
        if self._infer is None:
            import tensorflow as tf

            model = self.model
            spec = tf.TensorSpec((None, *x.shape[1:]), tf.float32)
            self._infer = tf.function(lambda t: model(t, training=False), input_signature=[spec])
        return np.asarray(self._infer(x))

    def predict(
        self,
        history: pd.DataFrame,
        intervals: bool = False,
        levels: Sequence[float] | None = None,
        samples: int = 30,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """Next-business-day forecast in prices from the last rows of ``history``.

        ``history`` needs a ``date`` column and the feature columns, at least ``lookback``
        rows (+1 for log returns).  Returns one row: ``date``, ``forecast`` (first horizon
        step, deterministic) and, with ``intervals``, ``lower_<L>``/``upper_<L>`` (conformal
        when calibrated, else MC dropout) for ``levels`` (default: the calibrated ones).
        """
        levels = self._levels(levels)
        history = model_input(history, self.preprocessor)
        x = self.preprocessor.latest_window(history)  # (1, lookback, n_features)
        anchor = np.array([float(history[self.feature_cfg.target].iloc[-1])])
        point = self.preprocessor.to_prices(self._deterministic(x)[:, :1], anchor)[0, 0]
        row: dict[str, Any] = {
            DATE_COLUMN: next_business_days(history[DATE_COLUMN].iloc[-1], 1),
            "forecast": [point],
        }
        if intervals and self.calibration is not None:
            bounds = self.calibration.bands(np.array([point]), levels)
            for level in levels:
                row[f"lower_{level_name(level)}"] = [float(bounds.lower[level][0])]
                row[f"upper_{level_name(level)}"] = [float(bounds.upper[level][0])]
        elif intervals:
            import keras

            if seed is not None:
                keras.utils.set_random_seed(seed)
            batch = np.repeat(x, samples, axis=0)  # one stochastic pass per copy
            scaled = np.asarray(self.model(batch, training=True))[:, :1]  # (samples, 1)
            paths = self.preprocessor.to_prices(scaled, np.repeat(anchor, samples))[:, 0]
            bounds = quantile_bounds(paths, levels)
            for level in levels:
                row[f"lower_{level_name(level)}"] = [float(bounds.lower[level])]
                row[f"upper_{level_name(level)}"] = [float(bounds.upper[level])]
        return pd.DataFrame(row)

    def forecast(
        self,
        history: pd.DataFrame,
        days: int = 5,
        levels: Sequence[float] | None = None,
        samples: int = 30,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """Recursive ``days``-business-day forecast with intervals (see lstm_core.forecast)."""
        history = model_input(history, self.preprocessor)
        return recursive_forecast(
            self.model,
            self.preprocessor,
            history,
            days,
            self._levels(levels),
            samples,
            seed,
            calibration=self.calibration,
        )

    def save(self, directory: str | Path) -> Path:
        """Write model.keras (native format), preprocessor.json, features.json and, when
        calibrated, calibration.json."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(path / MODEL_FILE)
        (path / PREPROCESSOR_FILE).write_text(json.dumps(self.preprocessor.to_dict(), indent=2))
        (path / FEATURES_FILE).write_text(self.feature_cfg.model_dump_json(indent=2))
        if self.calibration is not None:
            text = json.dumps(self.calibration.to_dict(), indent=1)
            (path / CALIBRATION_FILE).write_text(text)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Forecaster:
        """Load a directory written by :meth:`save` (Keras safe mode: no arbitrary code)."""
        import keras

        path = Path(directory)
        preprocessor = Preprocessor.from_dict(json.loads((path / PREPROCESSOR_FILE).read_text()))
        features = FeatureConfig.model_validate_json((path / FEATURES_FILE).read_text())
        if features != preprocessor.feature_cfg:
            raise ValueError(f"{FEATURES_FILE} and {PREPROCESSOR_FILE} disagree in {path}")
        # compile=False: serving needs no optimizer state (and skips restoring it)
        model = keras.models.load_model(path / MODEL_FILE, safe_mode=True, compile=False)
        calibration = None
        if (path / CALIBRATION_FILE).exists():
            state = json.loads((path / CALIBRATION_FILE).read_text())
            calibration = ConformalCalibration.from_dict(state)
        return cls(model, preprocessor, calibration)
