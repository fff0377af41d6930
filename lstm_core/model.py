"""The tutorial's stacked LSTM network."""

from __future__ import annotations

from typing import Any, get_args

import numpy as np

from lstm_core.config import ModelConfig

BACKENDS = get_args(ModelConfig.model_fields["backend"].annotation)  # fast, wavefront, fused, keras


def compile_options(backend: str) -> dict[str, Any]:
    """``model.compile`` kwargs for a ModelConfig.backend.

    * "fast": the whole stack as one ``lstm_core.fast_stack.FastLSTMStack`` (each half of a
      batch on its own core, trained by the Numba kernels of ``lstm_core.stack_kernels``:
      the outer train step must stay un-jitted, or XLA would inline both halves into one
      single-threaded program);
    * "wavefront": the same layer with its XLA wavefront kernel (all layers advance together,
      XLA-compiled inside the layer; also un-jitted outside);
    * "fused": one ``lstm_core.fast_lstm.FastLSTM`` per layer (fused step, hand-written
      BPTT) under ``jit_compile``;
    * "keras": plain ``keras.layers.LSTM``, the tutorial's path and the fallback.

    See benchmarks/bench_train.py, bench_stack.py and bench_levers.py for the figures.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown model backend {backend!r}; expected one of {BACKENDS}")
    # "fused": unrolling 60 steps x 4 layers makes XLA's compile take minutes: keep the loop.
    return {"jit_compile": backend == "fused"}


def lstm_layer_class(backend: str) -> Any:
    """The per-layer LSTM class of a backend: FastLSTM ("fused") or keras's LSTM.

    FastLSTM subclasses ``keras.layers.LSTM`` (same weights, config and maths; checked against
    ``lstm_core.reference`` in tests/lstm_core/test_fast_lstm.py).  "fast" and "wavefront"
    have no per-layer class: ``build_model`` uses one FastLSTMStack for all layers.
    """
    import keras

    compile_options(backend)  # validates the name
    if backend == "fused":
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
    to make the initial weights reproducible (it seeds Keras' global RNGs).  Every backend
    builds the same network: the same weights per layer, Dropout after every LSTM layer.
    """
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    compile_kwargs = compile_options(model_cfg.backend)
    model = keras.Sequential(name="lstm_forecaster")
    model.add(keras.Input(shape=(lookback, n_features)))
    if model_cfg.backend in ("fast", "wavefront"):
        from lstm_core.fast_stack import FastLSTMStack

        kernel = "numba" if model_cfg.backend == "fast" else "xla"
        # Dropout between the layers happens inside the stack; the last one stays a layer.
        model.add(
            FastLSTMStack(model_cfg.units, model_cfg.layers, model_cfg.dropout, kernel=kernel)
        )
        model.add(keras.layers.Dropout(model_cfg.dropout))
    else:
        lstm_cls = lstm_layer_class(model_cfg.backend)
        for i in range(model_cfg.layers):
            # every LSTM but the last hands its whole sequence to the next one
            last = i == model_cfg.layers - 1
            model.add(lstm_cls(model_cfg.units, return_sequences=not last))
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
