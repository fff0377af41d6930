"""Split, scale and window one ticker's daily prices.

Index conventions used throughout the core (``N`` rows in the frame, ``L`` lookback,
``h`` horizon):

* ``target_transform="price"``: the model sees scaled price levels.  A window whose
  first target is row ``t`` reads rows ``t-L .. t-1`` and predicts rows ``t .. t+h-1``.
* ``target_transform="log_return"``: the model sees scaled daily log returns; the
  return of row ``i`` is ``log(p_i / p_{i-1})`` (volume: ``log1p(v_i) - log1p(v_{i-1})``
  because volume can be zero).  Row 0 has no return, so a window needs ``L + 1`` rows of
  history.  Predicted price = anchor price * exp(cumulative predicted return), where the
  anchor is the last known target price (row ``t-1``).

A window belongs to the split that contains *all* of its target rows; its inputs may
read history before the split starts, never anything after its targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from lstm_core.config import EvaluationConfig, FeatureConfig

DATE_COLUMN = "date"
_PREPROCESSOR_FORMAT = 1


class DataError(ValueError):
    """The input data cannot produce the requested windows (too short, constant, invalid)."""


# --------------------------------------------------------------------------- validation


def validate_frame(df: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Raise DataError unless ``df`` has a sorted, unique date column and finite ``columns``."""
    missing = [c for c in (DATE_COLUMN, *columns) if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; got {list(df.columns)}")
    dates = df[DATE_COLUMN]
    if not pd.api.types.is_datetime64_any_dtype(dates):
        raise DataError(f"column {DATE_COLUMN!r} must be datetime64, got {dates.dtype}")
    if not dates.is_monotonic_increasing or dates.duplicated().any():
        raise DataError(f"column {DATE_COLUMN!r} must be strictly increasing (sorted, unique)")
    values = df[list(columns)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        cols = [c for c, b in zip(columns, bad.any(axis=0), strict=True) if b]
        raise DataError(f"{int(bad.sum())} missing or non-finite value(s) in column(s) {cols}")


# --------------------------------------------------------------------------- split


@dataclass(frozen=True)
class SplitFrames:
    """A chronological train/validation/test split of one frame.

    ``frame`` holds every row up to the end of the test part; ``train_end`` and
    ``val_end`` are row counts (exclusive ends), so train = rows ``[0, train_end)``,
    validation = ``[train_end, val_end)``, test = ``[val_end, len(frame))``.
    """

    frame: pd.DataFrame
    train_end: int
    val_end: int

    @property
    def train(self) -> pd.DataFrame:
        return self.frame.iloc[: self.train_end]

    @property
    def val(self) -> pd.DataFrame:
        return self.frame.iloc[self.train_end : self.val_end]

    @property
    def test(self) -> pd.DataFrame:
        return self.frame.iloc[self.val_end :]


def split_frame(
    df: pd.DataFrame,
    eval_cfg: EvaluationConfig,
    val_start: Any = None,
    test_start: Any = None,
) -> SplitFrames:
    """Split chronologically by ``eval_cfg`` fractions, or by explicit start dates.

    With dates, validation = ``val_start <= date < test_start`` and test =
    ``date >= test_start``; both dates must be given together.
    """
    frame = df.reset_index(drop=True)
    n_rows = len(frame)
    if (val_start is None) != (test_start is None):
        raise ValueError("give both val_start and test_start, or neither")
    if val_start is not None:
        dates = frame[DATE_COLUMN]
        train_end = int((dates < pd.Timestamp(val_start)).sum())
        val_end = int((dates < pd.Timestamp(test_start)).sum())
        if val_end < train_end:
            raise ValueError(f"test_start {test_start} precedes val_start {val_start}")
    else:
        n_test = int(round(n_rows * eval_cfg.test_fraction))
        n_val = int(round(n_rows * eval_cfg.val_fraction))
        val_end = n_rows - n_test
        train_end = val_end - n_val
    if train_end <= 0 or val_end >= n_rows:
        raise DataError(
            f"{n_rows} rows give an empty split (train rows {train_end}, "
            f"test rows {n_rows - val_end})"
        )
    return SplitFrames(frame=frame, train_end=train_end, val_end=val_end)


# --------------------------------------------------------------------------- transforms


def _history_offset(feature_cfg: FeatureConfig) -> int:
    """Rows consumed by the transform before the first usable feature row."""
    return 1 if feature_cfg.target_transform == "log_return" else 0


def raw_features(values: np.ndarray, feature_cfg: FeatureConfig) -> np.ndarray:
    """Turn raw column values ``(..., rows, n_features)`` into model features, unscaled.

    ``price``: unchanged.  ``log_return``: log price ratios and log1p volume differences,
    ``(..., rows - 1, n_features)``.
    """
    if feature_cfg.target_transform == "price":
        return values
    out = np.empty(values[..., 1:, :].shape, dtype=np.float64)
    for j, col in enumerate(feature_cfg.columns):
        col_values = values[..., j]
        if col == "volume":
            # volume can be 0 (suspended days): log1p keeps the difference finite
            if (col_values < 0).any():
                raise DataError("volume must be non-negative for log_return features")
            logs = np.log1p(col_values)
        else:
            if (col_values <= 0).any():
                raise DataError(f"column {col!r} must be positive for log_return features")
            logs = np.log(col_values)
        out[..., j] = np.diff(logs, axis=-1)
    return out


@dataclass
class Preprocessor:
    """Feature transform + a scaler fitted on the training part only.

    ``scaler`` is a fitted scikit-learn MinMaxScaler or StandardScaler over
    ``feature_cfg.columns`` (in transformed units: prices or log returns).
    """

    feature_cfg: FeatureConfig
    scaler: MinMaxScaler | StandardScaler

    @property
    def offset(self) -> int:
        return _history_offset(self.feature_cfg)

    @property
    def rows_needed(self) -> int:
        """Rows of history needed for one input window."""
        return self.feature_cfg.lookback + self.offset

    @property
    def target_index(self) -> int:
        return self.feature_cfg.columns.index(self.feature_cfg.target)

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(mult, add) such that scaled = x * mult + add, per feature."""
        if isinstance(self.scaler, MinMaxScaler):
            return np.asarray(self.scaler.scale_), np.asarray(self.scaler.min_)
        scale = np.asarray(self.scaler.scale_)
        return 1.0 / scale, -np.asarray(self.scaler.mean_) / scale

    def column_values(self, df: pd.DataFrame) -> np.ndarray:
        """Raw feature column values, ``(rows, n_features)``, by name."""
        return df[list(self.feature_cfg.columns)].to_numpy(dtype=np.float64)

    def transform_values(self, values: np.ndarray) -> np.ndarray:
        """Raw values ``(..., rows, n_features)`` -> scaled features ``(..., rows - offset, n_features)``."""
        mult, add = self._affine()
        return raw_features(values, self.feature_cfg) * mult + add

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Scaled features for every usable row of ``df``: ``(len(df) - offset, n_features)``."""
        return self.transform_values(self.column_values(df))

    def inverse_target(self, scaled: np.ndarray) -> np.ndarray:
        """Scaled target values -> target units (price or log return), same shape."""
        mult, add = self._affine()
        j = self.target_index
        return (np.asarray(scaled, dtype=np.float64) - add[j]) / mult[j]

    def to_prices(self, scaled: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """Scaled model output ``(..., horizon)`` -> prices ``(..., horizon)``.

        ``anchor`` ``(...)`` is the last known target price before each forecast; it is
        only used for log returns (cumulative over the horizon).
        """
        values = self.inverse_target(scaled)
        if self.feature_cfg.target_transform == "price":
            return values
        return np.asarray(anchor, dtype=np.float64)[..., None] * np.exp(np.cumsum(values, axis=-1))

    def latest_window(self, history: pd.DataFrame) -> np.ndarray:
        """The model input for the day after ``history``'s last row: ``(1, lookback, n_features)``."""
        validate_frame(history, self.feature_cfg.columns)
        if len(history) < self.rows_needed:
            raise DataError(
                f"history has {len(history)} rows, needs at least {self.rows_needed} "
                f"(lookback {self.feature_cfg.lookback} + {self.offset} for the transform)"
            )
        values = self.column_values(history.iloc[-self.rows_needed :])
        return self.transform_values(values)[None, ...].astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON state (no pickle): feature config + fitted scaler attributes."""
        s = self.scaler
        if isinstance(s, MinMaxScaler):
            attrs = ["data_min_", "data_max_", "data_range_", "scale_", "min_"]
            kind = "minmax"
        else:
            attrs = ["mean_", "var_", "scale_"]
            kind = "standard"
        return {
            "format": _PREPROCESSOR_FORMAT,
            "feature_config": self.feature_cfg.model_dump(mode="json"),
            "scaler": {
                "kind": kind,
                "n_samples_seen": int(s.n_samples_seen_),
                **{a.rstrip("_"): [float(x) for x in getattr(s, a)] for a in attrs},
            },
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Preprocessor:
        """Rebuild from :meth:`to_dict` output."""
        if state.get("format") != _PREPROCESSOR_FORMAT:
            raise ValueError(f"unsupported preprocessor format {state.get('format')!r}")
        feature_cfg = FeatureConfig(**state["feature_config"])
        params = state["scaler"]
        scaler: MinMaxScaler | StandardScaler
        if params["kind"] == "minmax":
            scaler = MinMaxScaler(feature_range=(0, 1))
            attrs = ["data_min", "data_max", "data_range", "scale", "min"]
        else:
            scaler = StandardScaler()
            attrs = ["mean", "var", "scale"]
        for a in attrs:
            setattr(scaler, a + "_", np.asarray(params[a], dtype=np.float64))
        scaler.n_features_in_ = len(feature_cfg.columns)
        scaler.n_samples_seen_ = params["n_samples_seen"]
        return cls(feature_cfg=feature_cfg, scaler=scaler)


def fit_preprocessor(train_df: pd.DataFrame, feature_cfg: FeatureConfig) -> Preprocessor:
    """Fit the scaler on the training rows only (after the feature transform)."""
    validate_frame(train_df, feature_cfg.columns)
    offset = _history_offset(feature_cfg)
    if len(train_df) < offset + 2:
        raise DataError(f"training part has {len(train_df)} rows, needs at least {offset + 2}")
    values = raw_features(
        train_df[list(feature_cfg.columns)].to_numpy(dtype=np.float64), feature_cfg
    )  # (rows - offset, n_features)
    spread = np.ptp(values, axis=0)
    constant = [c for c, s in zip(feature_cfg.columns, spread, strict=True) if s == 0]
    if constant:
        what = "price" if feature_cfg.target_transform == "price" else "log_return"
        raise DataError(
            f"column(s) {constant} are constant over the {len(train_df)} training rows "
            f"({what} range 0): the scaler cannot scale them"
        )
    scaler = (
        MinMaxScaler(feature_range=(0, 1)) if feature_cfg.scaler == "minmax" else StandardScaler()
    )
    scaler.fit(values)  # NumPy, not a DataFrame: no feature-name warnings later
    return Preprocessor(feature_cfg=feature_cfg, scaler=scaler)


# --------------------------------------------------------------------------- windows


def window_arrays(
    features: np.ndarray, target: np.ndarray, lookback: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """All windows of ``features`` ``(T, n_features)`` and ``target`` ``(T,)``, as strided views.

    Window ``k`` reads ``features[k : k + lookback]`` and predicts
    ``target[k + lookback : k + lookback + horizon]``.  Returns
    X ``(T - lookback - horizon + 1, lookback, n_features)`` and y ``(..., horizon)``;
    no data is copied.
    """
    n_windows = len(features) - lookback - horizon + 1
    if n_windows <= 0:
        return (
            np.empty((0, lookback, features.shape[1]), features.dtype),
            np.empty((0, horizon), target.dtype),
        )
    # sliding_window_view puts the window axis last: (T-L+1, n_features, L) -> swap to (.., L, n_features)
    X = sliding_window_view(features, lookback, axis=0).swapaxes(1, 2)[:n_windows]
    y = sliding_window_view(target[lookback:], horizon)[:n_windows]  # (n_windows, horizon)
    return X, y


@dataclass(frozen=True)
class SplitWindows:
    """Windows whose targets lie in one split.

    X ``(n, lookback, n_features)`` and y ``(n, horizon)`` are scaled;
    ``target_dates`` ``(n, horizon)``, ``actual`` prices ``(n, horizon)``, ``anchor``
    prices ``(n,)`` (the last known target price) and ``anchor_index`` ``(n,)`` (its row
    in the frame) are in price units.
    """

    X: np.ndarray
    y: np.ndarray
    target_dates: np.ndarray
    actual: np.ndarray
    anchor: np.ndarray
    anchor_index: np.ndarray

    def __len__(self) -> int:
        return len(self.X)


@dataclass(frozen=True)
class WindowedData:
    """Everything the training and evaluation steps need from one split frame."""

    train: SplitWindows
    val: SplitWindows
    test: SplitWindows
    preprocessor: Preprocessor
    dates: np.ndarray  # (N,) every row's date
    target_prices: np.ndarray  # (N,) the target column in price units
    train_end: int  # rows [0, train_end) are the training part

    @property
    def lookback(self) -> int:
        return self.preprocessor.feature_cfg.lookback

    @property
    def n_features(self) -> int:
        return len(self.preprocessor.feature_cfg.columns)

    @property
    def horizon(self) -> int:
        return self.preprocessor.feature_cfg.horizon


def make_dataset(frames: SplitFrames, preprocessor: Preprocessor) -> WindowedData:
    """Window every split with the (already fitted) preprocessor."""
    cfg = preprocessor.feature_cfg
    lookback, horizon, offset = cfg.lookback, cfg.horizon, preprocessor.offset
    frame = frames.frame
    validate_frame(frame, cfg.columns)
    features = preprocessor.transform(frame).astype(np.float32)  # (N - offset, n_features)
    target = features[:, preprocessor.target_index]  # (N - offset,)
    X_all, y_all = window_arrays(features, target, lookback, horizon)
    # window k's first target is row t = k + offset + lookback of the frame
    first_target = offset + lookback
    prices = frame[cfg.target].to_numpy(dtype=np.float64)
    dates = frame[DATE_COLUMN].to_numpy()

    def windows_for(name: str, start: int, end: int, required: bool) -> SplitWindows:
        t_lo = max(start, first_target)
        t_hi = end - horizon  # last first-target row whose targets stay inside the split
        if t_hi < t_lo:
            if not required and end == start:
                t_hi = t_lo - 1  # an empty validation part is allowed (val_fraction 0)
            else:
                need = horizon + max(0, first_target - start)
                raise DataError(
                    f"{name} part has {end - start} rows (rows {start}..{end - 1}) but needs "
                    f"{need} for one window: horizon {horizon} target row(s), after "
                    f"{first_target} rows of history (lookback {lookback} + {offset} for the "
                    f"transform) that may precede the part"
                )
        t = np.arange(t_lo, t_hi + 1)  # first-target rows
        k = t - first_target
        targets_idx = t[:, None] + np.arange(horizon)  # (n, horizon)
        return SplitWindows(
            X=X_all[k[0] : k[-1] + 1] if len(k) else X_all[:0],  # a slice keeps the view
            y=y_all[k[0] : k[-1] + 1] if len(k) else y_all[:0],
            target_dates=dates[targets_idx],
            actual=prices[targets_idx],
            anchor=prices[t - 1],
            anchor_index=t - 1,
        )

    n_rows = len(frame)
    return WindowedData(
        train=windows_for("training", 0, frames.train_end, True),
        val=windows_for("validation", frames.train_end, frames.val_end, False),
        test=windows_for("test", frames.val_end, n_rows, True),
        preprocessor=preprocessor,
        dates=dates,
        target_prices=prices,
        train_end=frames.train_end,
    )


def prepare_data(
    df: pd.DataFrame,
    feature_cfg: FeatureConfig,
    eval_cfg: EvaluationConfig,
    val_start: Any = None,
    test_start: Any = None,
) -> WindowedData:
    """DataFrame -> split -> scaler fitted on train -> windows (the three steps in one call)."""
    validate_frame(df, feature_cfg.columns)
    frames = split_frame(df, eval_cfg, val_start=val_start, test_start=test_start)
    preprocessor = fit_preprocessor(frames.train, feature_cfg)
    return make_dataset(frames, preprocessor)
