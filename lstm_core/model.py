"""The tutorial's stacked LSTM network."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_core.config import ModelConfig


def backend_options(backend: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(compile kwargs, LSTM layer kwargs) for a ModelConfig.backend.

    The one place where the "fast" path is defined (with ``lstm_layer_class``), so it can be
    benchmarked and tuned without touching the network: XLA compilation of a fused LSTM
    (``lstm_core.fast_lstm.FastLSTM``: hoisted input projection, one matmul per step in a
    ``tf.while_loop``, hand-written BPTT).  See benchmarks/bench_train.py.
    """
    if backend == "fast":
        # Unrolling 60 steps x 4 layers makes XLA's compile take minutes: keep the loop.
        return {"jit_compile": True}, {}
    if backend == "keras":
        return {}, {}
    raise ValueError(f"unknown model backend {backend!r}; expected 'fast' or 'keras'")


def lstm_layer_class(backend: str) -> Any:
    """The LSTM layer class for a ModelConfig.backend: FastLSTM ("fast") or keras's LSTM.

    FastLSTM subclasses ``keras.layers.LSTM`` (same weights, config and maths; checked against
    ``lstm_core.reference`` in tests/lstm_core/test_fast_lstm.py).
    """
    import keras

    backend_options(backend)  # validates the name
    if backend == "fast":
        from lstm_core.fast_lstm import FastLSTM

        return FastLSTM
    return keras.layers.LSTM


def build_model(
    model_cfg: ModelConfig,
    lookback: int,
    n_features: int,
    horizon: int,
    seed: int | None = None,
) -> Any:
    """Stacked LSTM(units) + Dropout layers, Dense(horizon), Adam, MSE.

    Input ``(batch, lookback, n_features)``, output ``(batch, horizon)``.  Pass ``seed``
    to make the initial weights reproducible (it seeds Keras' global RNGs).
    """
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    compile_kwargs, lstm_kwargs = backend_options(model_cfg.backend)
    lstm_cls = lstm_layer_class(model_cfg.backend)
    model = keras.Sequential(name="lstm_forecaster")
    model.add(keras.Input(shape=(lookback, n_features)))
    for i in range(model_cfg.layers):
        # every LSTM but the last hands its whole sequence to the next one
        last = i == model_cfg.layers - 1
        model.add(lstm_cls(model_cfg.units, return_sequences=not last, **lstm_kwargs))
        model.add(keras.layers.Dropout(model_cfg.dropout))
    model.add(keras.layers.Dense(horizon))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=model_cfg.learning_rate),
        loss="mean_squared_error",
        **compile_kwargs,
    )
    return model


def predict_scaled(model: Any, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Deterministic model output ``(n, horizon)`` for ``X`` ``(n, lookback, n_features)``.

    Calls the model directly in chunks (no ``model.predict`` overhead, dropout off).
    """
    if len(X) == 0:
        return np.empty((0, model.output_shape[-1]), dtype=np.float32)
    chunks = [
        np.asarray(
            model(np.ascontiguousarray(X[i : i + batch_size], dtype=np.float32), training=False)
        )
        for i in range(0, len(X), batch_size)
    ]
    return np.concatenate(chunks, axis=0)
