"""Split, scale and window one ticker's daily prices (lookback ``L``): the next day's price.

A window whose target is row ``t`` reads rows ``t-L .. t-1`` (scaled prices) or their daily
log returns (``log(p_i / p_{i-1})``; volume ``log1p``, as it can be 0), which need row ``t-L-1``
too; price = anchor (last known price) * exp(return).  A window belongs to the split holding its
target row; its inputs may read history before the split, never after.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Self

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from lstm_core.config import EvaluationConfig, FeatureConfig

DATE_COLUMN = "date"
_PREPROCESSOR_FORMAT = 2  # 1: scikit-learn's fitted scaler attributes, still read
_ISO_DATE = "an ISO date (like 2017-11-10)"


class DataError(ValueError):
    """The input data cannot produce the requested windows (too short, constant, invalid)."""


def validate_frame(df: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Raise DataError unless ``df`` has ``columns`` and a sorted, unique datetime date column."""
    if missing := [c for c in (DATE_COLUMN, *columns) if c not in df.columns]:
        raise DataError(f"missing column(s) {missing}; got {list(df.columns)}")
    dates = df[DATE_COLUMN]
    if not pd.api.types.is_datetime64_any_dtype(dates):
        raise DataError(f"column {DATE_COLUMN!r} must be datetime64, got {dates.dtype}")
    if not dates.is_monotonic_increasing or dates.duplicated().any():
        raise DataError(f"column {DATE_COLUMN!r} must be strictly increasing (sorted, unique)")


@dataclass(frozen=True)
class SplitFrames:
    """Rows ``[0, train_end)`` train, ``[train_end, val_end)`` validation, the rest test."""

    frame: pd.DataFrame
    train_end: int
    val_end: int

    @property
    def train(self) -> pd.DataFrame:
        return self.frame.iloc[: self.train_end]


def split_frame(df: pd.DataFrame, eval_cfg: EvaluationConfig) -> SplitFrames:
    """Split by date order into ``eval_cfg``'s fractions: train, validation, test."""
    frame = df.reset_index(drop=True)
    n_rows = len(frame)
    val_end = n_rows - int(round(n_rows * eval_cfg.test_fraction))
    train_end = val_end - int(round(n_rows * eval_cfg.val_fraction))
    if train_end <= 0 or val_end >= n_rows:
        raise DataError(
            f"{n_rows} rows give an empty split (train rows {train_end}, "
            f"test rows {n_rows - val_end})"
        )
    return SplitFrames(frame=frame, train_end=train_end, val_end=val_end)


@dataclass(frozen=True, eq=False)  # arrays: compared by identity
class Preprocessor:
    """Feature transform, then the scaling fitted on the training part: ``x * mult + add``."""

    feature_cfg: FeatureConfig
    mult: np.ndarray  # (n_features,) minmax: 1 / range; standard: 1 / std
    add: np.ndarray  # (n_features,) minmax: -min / range; standard: -mean / std

    @property
    def offset(self) -> int:
        """Rows the transform consumes before the first feature row."""
        return 1 if self.feature_cfg.target_transform == "log_return" else 0

    @property
    def rows_needed(self) -> int:
        """Rows of history needed for one input window."""
        return self.feature_cfg.lookback + self.offset

    @property
    def target_index(self) -> int:
        return self.feature_cfg.columns.index(self.feature_cfg.target)

    @property
    def _volume(self) -> np.ndarray:
        """Which features are volume: 0 on suspended days, so log returns read log(1 + v)."""
        return np.array([c == "volume" for c in self.feature_cfg.columns])

    def column_values(self, df: pd.DataFrame) -> np.ndarray:
        """Raw feature values ``(rows, n_features)``; DataError naming the first bad one by row."""
        columns = self.feature_cfg.columns
        values = df[list(columns)].to_numpy(dtype=np.float64)
        volume = self._volume  # for log returns (offset 1) it may be 0, the prices may not
        low = np.where(volume, values < 0, values <= 0) & (self.offset > 0)
        if (bad := low | ~np.isfinite(values)).any():
            row, col = np.argwhere(bad)[0]
            why = f"{'negative' if volume[col] else 'not positive'} (the model reads log returns)"
            raise DataError(
                f"column {columns[col]!r}, row {row + 1} of {len(values)}: {values[row, col]} is "
                + (why if low[row, col] else "not a finite number")
            )
        return values

    def features(self, values: np.ndarray) -> np.ndarray:
        """Raw values ``(..., rows, n_features)`` -> unscaled features ``(..., rows - offset, .)``."""
        if self.feature_cfg.target_transform == "price":
            return values
        return np.diff(np.log(values + self._volume), axis=-2)

    def transform(self, x: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Frame or raw values ``(..., rows, n_features)`` -> scaled ``(..., rows - offset, .)``."""
        values = self.column_values(x) if isinstance(x, pd.DataFrame) else x
        return self.features(values) * self.mult + self.add

    def inverse_target(self, scaled: np.ndarray) -> np.ndarray:
        """Scaled target values -> target units (price or log return), same shape."""
        j = self.target_index
        return (np.asarray(scaled, dtype=np.float64) - self.add[j]) / self.mult[j]

    def to_prices(self, scaled: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """Scaled output ``(..., steps)`` -> prices; ``anchor`` ``(...)``: the last known price."""
        values = self.inverse_target(scaled)
        if self.feature_cfg.target_transform == "price":
            return values
        return np.asarray(anchor, dtype=np.float64)[..., None] * np.exp(np.cumsum(values, axis=-1))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON state (no pickle): feature config and the fitted scaling."""
        return {
            "format": _PREPROCESSOR_FORMAT,
            "feature_config": self.feature_cfg.model_dump(mode="json"),
            "mult": self.mult.tolist(),
            "add": self.add.tolist(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Self:
        # horizon: a model saved before forecasts were always one day ahead (its first is served)
        cfg = FeatureConfig(**{k: v for k, v in state["feature_config"].items() if k != "horizon"})
        version = state.get("format")
        if version == 1:  # scikit-learn's MinMaxScaler or StandardScaler attributes
            p = {k: np.asarray(v) for k, v in state["scaler"].items()}
            minmax = p["kind"] == "minmax"
            mult = p["scale"] if minmax else 1.0 / p["scale"]
            state = {"mult": mult, "add": p["min"] if minmax else -p["mean"] * mult}
        elif version != _PREPROCESSOR_FORMAT:
            raise ValueError(f"unsupported preprocessor format {version!r}")
        return cls(cfg, np.asarray(state["mult"], np.float64), np.asarray(state["add"], np.float64))


def fit_preprocessor(train_df: pd.DataFrame, feature_cfg: FeatureConfig) -> Preprocessor:
    """Fit the scaler on the training rows only (after the feature transform)."""
    validate_frame(train_df, feature_cfg.columns)
    pre = Preprocessor(feature_cfg, np.ones(0), np.zeros(0))  # the transform, not yet the scaling
    if len(train_df) < pre.offset + 2:
        raise DataError(f"training part has {len(train_df)} rows, needs at least {pre.offset + 2}")
    values = pre.features(pre.column_values(train_df))
    if constant := np.asarray(feature_cfg.columns)[np.ptp(values, axis=0) == 0].tolist():
        raise DataError(
            f"column(s) {constant} are constant over the {len(train_df)} training rows "
            f"({feature_cfg.target_transform} range 0): the scaler cannot scale them"
        )
    low, span = values.min(axis=0), np.ptp(values, axis=0)  # minmax onto [0, 1]
    if feature_cfg.scaler == "standard":
        low, span = values.mean(axis=0), values.std(axis=0)
    return Preprocessor(feature_cfg, 1.0 / span, -low / span)


def _coerced(values: pd.Series, column: str, convert: Any, what: str) -> pd.Series:
    """``convert(values)``, else DataError naming the first value it refuses by its row."""
    try:
        out = convert(values, errors="coerce")
    except (ValueError, TypeError) as exc:  # the column as a whole, e.g. mixed time zones
        raise DataError(f"column {column!r}: {exc}") from None
    if (bad := (out.isna() & values.notna()).to_numpy()).any():
        row = int(bad.argmax())
        raise DataError(
            f"column {column!r}, row {row + 1} of {len(values)}: {values.iloc[row]!r} is not {what}"
        )
    return out


def trading_days(holidays: Sequence[str] = ()) -> pd.offsets.CustomBusinessDay:
    """Monday to Friday except ``holidays`` (ISO dates): the sessions a model reads and forecasts."""
    return pd.offsets.CustomBusinessDay(holidays=list(holidays))


def model_input(
    history: Any, preprocessor: Preprocessor, holidays: Sequence[str] | None = None
) -> pd.DataFrame:
    """``date`` and the feature columns of ``history`` (any order; ISO strings, numeric strings
    taken), coerced, sorted, validated; with ``holidays``, a day not traded is refused."""
    frame = pd.DataFrame(history)
    cfg = preprocessor.feature_cfg
    needed = [DATE_COLUMN, *cfg.columns]
    if missing := [c for c in needed if c not in frame.columns]:
        raise DataError(
            f"input is missing column(s) {missing}: the model reads {needed} "
            f"(other columns are ignored); got {[str(c) for c in frame.columns]}"
        )
    frame = frame[needed].copy()
    if len(frame) < (need := preprocessor.rows_needed):
        # rows, not calendar days: a suspension's missing sessions are no error (the store
        # keeps such holes), so the message must not promise consecutive days
        raise DataError(
            f"history has {len(frame)} rows, needs at least {need}, one per trading day (the "
            f"most recent {need} are used: lookback {cfg.lookback} + {preprocessor.offset} for "
            f"the {cfg.target_transform} transform)"
        )
    given = dates = frame[DATE_COLUMN]
    if not pd.api.types.is_datetime64_any_dtype(dates):
        iso_date = partial(pd.to_datetime, format="ISO8601")
        dates = _coerced(dates, DATE_COLUMN, iso_date, _ISO_DATE)
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)  # a trading day is a calendar date
    frame[DATE_COLUMN] = dates
    for col in cfg.columns:
        numbers = _coerced(frame[col], col, pd.to_numeric, "a number")
        frame[col] = numbers.astype(np.float64)
    preprocessor.column_values(frame)  # a NaN or a price <= 0 is named by its row as given
    # "", None: parsed to NaT without an error; a time of day: no daily session (ingest refuses it)
    odd = np.flatnonzero((dates.isna() | (dates != dates.dt.normalize())).to_numpy())
    if odd.size:
        row = int(odd[0])
        timed = "" if pd.isna(dates.iloc[row]) else ": the model reads days, not times of day"
        raise DataError(
            f"column {DATE_COLUMN!r}, row {row + 1} of {len(dates)}: {given.iloc[row]!r} is not "
            f"{_ISO_DATE}{timed}"
        )
    # rows may come in any order (sorted next): only a date given twice is refused, by its rows
    if (repeated := frame[DATE_COLUMN].duplicated(keep=False).to_numpy()).any():
        day = frame[DATE_COLUMN][repeated].min()
        rows = np.flatnonzero(frame[DATE_COLUMN].to_numpy() == day) + 1
        raise DataError(
            f"column {DATE_COLUMN!r}: {day.date()} is given more than once (rows "
            f"{', '.join(map(str, rows))}): one row per trading day"
        )
    if holidays is not None:  # each row is read as the next session: a closed day shifts them
        days = frame[DATE_COLUMN].to_numpy().astype("datetime64[D]")
        shut = np.flatnonzero(~np.is_busday(days, busdaycal=trading_days(holidays).calendar))
        if shut.size:
            day = frame[DATE_COLUMN].iloc[shut[0]]
            why = "" if day.dayofweek >= 5 else ", a holiday of the model's exchange"
            raise DataError(
                f"column {DATE_COLUMN!r}: {day.date()} (row {shut[0] + 1}) is not a trading day "
                f"(a {day:%A}{why}): remove the row, as the model reads each row as the next session"
            )
    frame = frame.sort_values(DATE_COLUMN, kind="stable", ignore_index=True)
    validate_frame(frame, cfg.columns)
    return frame


def window_arrays(
    features: np.ndarray, target: np.ndarray, lookback: int
) -> tuple[np.ndarray, np.ndarray]:
    """Strided windows of ``features`` ``(T, n_features)`` and ``target`` ``(T,)``: X ``(n,
    lookback, n_features)`` reads rows ``k .. k + lookback - 1``, y ``(n, 1)`` row ``k + lookback``."""
    if len(features) <= lookback:
        return np.empty((0, lookback, features.shape[1]), features.dtype), target[:0, None]
    # sliding_window_view puts the window axis last: (T-L+1, n_features, L) -> (.., L, n_features);
    # the last window has no next day to predict
    X = sliding_window_view(features, lookback, axis=0).swapaxes(1, 2)[:-1]
    return X, target[lookback:, None]


@dataclass(frozen=True)
class SplitWindows:
    """The ``n`` windows whose targets lie in one split."""

    X: np.ndarray  # (n, lookback, n_features), scaled
    y: np.ndarray  # (n, 1), scaled
    target_dates: np.ndarray  # (n, 1)
    actual: np.ndarray  # (n, 1) prices
    anchor: np.ndarray  # (n,) the last known target price
    anchor_index: np.ndarray  # (n,) the anchor's row in the frame

    def __len__(self) -> int:
        return len(self.X)


@dataclass(frozen=True)
class WindowedData:
    """Everything the training and evaluation steps need from one split frame."""

    train: SplitWindows
    val: SplitWindows
    test: SplitWindows
    preprocessor: Preprocessor
    target_prices: np.ndarray  # (N,) the target column in prices
    train_end: int  # rows [0, train_end) are the training part

    @property
    def lookback(self) -> int:
        return self.preprocessor.feature_cfg.lookback


def make_dataset(frames: SplitFrames, preprocessor: Preprocessor) -> WindowedData:
    """Window every split with the (already fitted) preprocessor."""
    cfg, frame = preprocessor.feature_cfg, frames.frame
    validate_frame(frame, cfg.columns)
    features = preprocessor.transform(frame).astype(np.float32)  # (N - offset, n_features)
    X_all, y_all = window_arrays(features, features[:, preprocessor.target_index], cfg.lookback)
    first = preprocessor.rows_needed  # window k's target is row k + first
    prices = frame[cfg.target].to_numpy(dtype=np.float64)
    dates = frame[DATE_COLUMN].to_numpy()

    def windows(name: str, start: int, end: int) -> SplitWindows:
        t = np.arange(max(start, first), end)  # the targets inside the part
        if len(t) == 0 and not (name == "validation" and end == start):  # val_fraction 0 is fine
            raise DataError(
                f"{name} part has {end - start} rows (rows {start}..{end - 1}) but needs "
                f"{1 + max(0, first - start)} for one window: its target row, after {first} rows "
                f"of history (lookback {cfg.lookback} + {preprocessor.offset} for the transform) "
                "that may precede the part"
            )
        k = slice(t[0] - first, t[-1] - first + 1) if len(t) else slice(0, 0)  # views, no copy
        rows = t[:, None]
        return SplitWindows(X_all[k], y_all[k], dates[rows], prices[rows], prices[t - 1], t - 1)

    return WindowedData(
        train=windows("training", 0, frames.train_end),
        val=windows("validation", frames.train_end, frames.val_end),
        test=windows("test", frames.val_end, len(frame)),
        preprocessor=preprocessor,
        target_prices=prices,
        train_end=frames.train_end,
    )


def prepare_data(
    df: pd.DataFrame, feature_cfg: FeatureConfig, eval_cfg: EvaluationConfig
) -> WindowedData:
    """DataFrame -> split -> scaler fitted on train -> windows (the three steps in one call)."""
    frames = split_frame(df, eval_cfg)
    return make_dataset(frames, fit_preprocessor(frames.train, feature_cfg))
