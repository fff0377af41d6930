"""Training: the engine (fast | keras), reproducible, early stopping, divergence detection."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_core import engine
from lstm_core.config import ModelConfig, TrainingConfig
from lstm_core.data import SplitWindows
from lstm_core.model import build_model, global_seed


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the weights are unusable."""


@dataclass
class TrainResult:
    """A trained model and its per-epoch losses."""

    model: Any
    history: dict[str, list[float]] = field(default_factory=dict)  # 'loss', 'val_loss'
    epochs_run: int = 0
    stopped_early: bool = False


def _divergence_guard() -> Any:
    """A callback that stops at the first epoch whose loss is NaN/inf and keeps where (``bad``)."""
    import keras

    class Guard(keras.callbacks.Callback):
        bad: tuple[int, str, float] | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            # a NaN in any batch makes the epoch mean NaN, so checking per epoch suffices
            for key in ("loss", "val_loss"):
                value = float((logs or {}).get(key, 0.0))
                if not math.isfinite(value):
                    self.bad = (epoch + 1, key, value)
                    self.model.stop_training = True
                    return

    return Guard()


def _dataset(
    X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int, repeat: bool = False
) -> Any:
    import tensorflow as tf

    arrays = tuple(np.ascontiguousarray(a, dtype=np.float32) for a in (X, y))
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        ds = ds.shuffle(len(X), seed=seed, reshuffle_each_iteration=True)
    # repeat: one iterator for the whole fit (epochs cut by steps_per_epoch, same batches); a
    # fresh iterator per epoch stalled the first step of some epochs.
    ds = ds.batch(batch_size).repeat() if repeat else ds.batch(batch_size)
    # No autotuning, a fixed prefetch (enough for in-memory arrays): destroying an autotuned
    # iterator (Keras makes a validation one every epoch) waits idle for the autotuner's thread in
    # busy Dask workers (RootDataset::Iterator::~Iterator).
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)


def train_model(
    model: Any,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray | None,
    y_val: np.ndarray | None,
    cfg: TrainingConfig,
    callbacks: Sequence[Any] = (),
    backend: str = "fast",
) -> TrainResult:
    """Fit ``model`` on ``(n, lookback, n_features)`` -> ``(n, outputs)`` windows in the Numba
    engine ("fast") or ``model.fit``, reproducibly (``cfg.seed``); early stopping restores the
    best weights.  Raises TrainingDivergedError if a loss becomes NaN/inf."""
    import keras

    if backend not in ("fast", "keras"):
        raise ValueError(f"unknown backend {backend!r}; expected 'fast' or 'keras'")
    if len(X_train) == 0:
        raise ValueError("no training windows")
    has_val = X_val is not None and y_val is not None and len(X_val) > 0
    guard, early = _divergence_guard(), None
    if cfg.early_stopping_patience > 0:
        monitor, patience = "val_loss" if has_val else "loss", cfg.early_stopping_patience
        early = keras.callbacks.EarlyStopping(monitor, patience=patience, restore_best_weights=True)
    all_callbacks = [c for c in (guard, early) if c is not None] + list(callbacks)
    if backend == "fast":
        history = engine.fit(model, X_train, y_train, X_val, y_val, cfg, all_callbacks)
    else:
        with global_seed(cfg.seed):  # tf.data's shuffle combines its seed with the global one
            ds = _dataset(X_train, y_train, cfg.batch_size, cfg.shuffle, cfg.seed, repeat=True)
            val_ds = _dataset(X_val, y_val, cfg.batch_size, False, cfg.seed) if has_val else None
        steps = math.ceil(len(X_train) / cfg.batch_size)
        # shuffle=False: the tf.data pipeline already shuffles (seeded)
        fitted = model.fit(ds, validation_data=val_ds, epochs=cfg.epochs, shuffle=False,
                           steps_per_epoch=steps, callbacks=all_callbacks, verbose=0)  # fmt: skip
        history = fitted.history
    if guard.bad is not None:
        epoch, key, value = guard.bad
        raise TrainingDivergedError(
            f"{key} became {value} at epoch {epoch}; lower the learning rate or check the inputs"
        )
    history = {k: [float(v) for v in vals] for k, vals in history.items()}
    history.setdefault("val_loss", [])
    stopped = early is not None and early.stopped_epoch > 0
    return TrainResult(model, history, epochs_run=len(history["loss"]), stopped_early=stopped)


def train_network(
    model_cfg: ModelConfig,
    cfg: TrainingConfig,
    train: SplitWindows,
    val: SplitWindows | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """A fresh :func:`build_model` network trained by ``train_model`` with ``model_cfg.backend``."""
    _, lookback, n_features = train.X.shape
    model = build_model(model_cfg, lookback, n_features, train.y.shape[1], seed=cfg.seed)
    X_val, y_val = (val.X, val.y) if val is not None else (None, None)
    return train_model(model, train.X, train.y, X_val, y_val, cfg, callbacks, model_cfg.backend)
