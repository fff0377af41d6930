"""A fitted model bundled with its preprocessor and calibration: forecast, save, load."""

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Self

import pandas as pd

from lstm_core.data import DATE_COLUMN, DataError, Preprocessor, model_input
from lstm_core.forecast import next_business_days, recursive_errors, simulate_paths
from lstm_core.intervals import ConformalCalibration, level_name, recalibrate
from lstm_core.model import predict_scaled

MODEL_FILE = "model.keras"
PREPROCESSOR_FILE = "preprocessor.json"
CALIBRATION_FILE = "calibration.json"
HOLIDAYS_FILE = "holidays.json"
DAYS_FILE = "forecast_days.json"


@dataclass(eq=False)  # hashable, compared by identity: a model has no value equality
class Forecaster:
    """Keras model + fitted Preprocessor, ready to serve, with conformal bands if calibrated; no
    forecast beyond ``max_days`` (evaluation.forecast_days; older models: calibration steps)."""

    model: Any
    preprocessor: Preprocessor
    calibration: ConformalCalibration | None = None
    holidays: tuple[str, ...] = ()  # weekdays without trading (ISO), skipped by forecast dates
    max_days: int | None = None

    def check_days(self, days: int) -> None:
        """Raise DataError, before any computation, unless ``days`` is 1 to the model's limit."""
        if days < 1:
            raise DataError(f"days must be >= 1, got {days}")
        limit = self.max_days or (self.calibration.steps if self.calibration else None)
        if limit is not None and days > limit:
            raise DataError(
                f"days {days} is out of range: this model forecasts up to {limit} day(s) ahead "
                f"(the evaluation.forecast_days it was trained with): ask for 1 to {limit}, or "
                "raise evaluation.forecast_days and retrain"
            )

    def recalibrated(self, history: pd.DataFrame) -> Self:
        """A copy whose calibration also scores ``history``'s days after it (rolling window)."""
        if self.calibration is None:
            return self
        frame = model_input(history, self.preprocessor, self.holidays)
        start = int((frame[DATE_COLUMN] <= pd.Timestamp(self.calibration.last_date)).sum())
        if start >= len(frame) or len(frame) <= self.preprocessor.rows_needed:
            return self  # no new day, or no window before it: nothing to score
        steps = self.calibration.steps
        errors = recursive_errors(self.model, self.preprocessor, frame, start, len(frame), steps)
        calibration = recalibrate(self.calibration, errors, frame[DATE_COLUMN].iloc[-1])
        return replace(self, calibration=calibration)

    def forecast(
        self,
        history: pd.DataFrame,
        days: int = 5,
        levels: Sequence[float] | None = None,
        intervals: bool = True,
        samples: Any = None,  # ignored: MC dropout's, which the pyfunc of older models passes
        seed: Any = None,
    ) -> pd.DataFrame:
        """Recursive forecast of the ``days`` trading days after ``history``: ``date``,
        ``forecast`` and, with ``intervals`` and a calibration, ``lower_<L>`` / ``upper_<L>``."""
        self.check_days(days)
        pre = self.preprocessor
        history = model_input(history, pre, self.holidays)
        raw = pre.column_values(history.iloc[-pre.rows_needed :])[None]  # (1, rows, n_features)
        point = simulate_paths(pre, raw, days, partial(predict_scaled, self.model))[0]
        dates = next_business_days(history[DATE_COLUMN].iloc[-1], days, self.holidays)
        frame = pd.DataFrame({DATE_COLUMN: dates, "forecast": point})
        if not intervals or self.calibration is None:
            return frame
        levels = self.calibration.levels if levels is None else levels
        bounds = self.calibration.bands(point, levels)
        for level in levels:
            frame[f"lower_{level_name(level)}"] = bounds.lower[level]
            frame[f"upper_{level_name(level)}"] = bounds.upper[level]
        return frame

    def save(self, directory: str | Path) -> Path:
        """Write model.keras, preprocessor.json, holidays.json and, when set, calibration.json
        and forecast_days.json."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(path / MODEL_FILE)
        (path / PREPROCESSOR_FILE).write_text(json.dumps(self.preprocessor.to_dict(), indent=2))
        if self.calibration is not None:
            (path / CALIBRATION_FILE).write_text(json.dumps(self.calibration.to_dict(), indent=1))
        (path / HOLIDAYS_FILE).write_text(json.dumps(list(self.holidays)))
        if self.max_days is not None:
            (path / DAYS_FILE).write_text(json.dumps({"max_days": self.max_days}))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Load a directory written by :meth:`save` (Keras safe mode: no arbitrary code)."""
        import keras

        path = Path(directory)

        def read(name: str, default: Any = None) -> Any:  # absent in models saved before it
            return json.loads((path / name).read_text()) if (path / name).exists() else default

        # compile=False: serving needs no optimizer state (and skips restoring it)
        model = keras.models.load_model(path / MODEL_FILE, safe_mode=True, compile=False)
        calibration = read(CALIBRATION_FILE)
        calibration = ConformalCalibration.from_dict(calibration) if calibration else None
        days = read(DAYS_FILE, {}).get("max_days")
        holidays = tuple(read(HOLIDAYS_FILE, ()))
        return cls(
            model, Preprocessor.from_dict(read(PREPROCESSOR_FILE)), calibration, holidays, days
        )
