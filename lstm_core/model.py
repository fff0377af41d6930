"""The tutorial's stacked LSTM network, as plain Keras layers."""

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, get_args

import numpy as np

from lstm_core.config import ModelConfig
from lstm_core.engine.trainer import MARK

BACKENDS = get_args(ModelConfig.model_fields["backend"].annotation)  # fast, keras
# tf.data's shuffle and Keras' global generator are process-wide: tickers trained in threads of
# one process take turns seeding and using them.
_GLOBAL_RNG = threading.Lock()


@contextlib.contextmanager
def global_seed(seed: int | None) -> Iterator[None]:
    """The global RNGs seeded with ``seed`` (None: as they are), for this thread alone inside."""
    import keras

    with _GLOBAL_RNG:
        if seed is not None:
            keras.utils.set_random_seed(seed)
        yield


def build_model(
    model_cfg: ModelConfig,
    lookback: int,
    n_features: int,
    outputs: int = 1,
    seed: int | None = None,
) -> Any:
    """Stacked ``LSTM`` + ``Dropout``, ``Dense(outputs)``, Adam, MSE, built-in layers only (the
    model saved and served); ``seed`` fixes initial weights and Dropout (None: random)."""
    import keras

    # Unseeded, Keras draws each initializer's seed from Python's global `random`, which other
    # threads of the process (Prefect's, a server's) may draw from meanwhile: explicit seeds.
    n = 3 * model_cfg.layers + 1
    seeds = [None] * n if seed is None else np.random.SeedSequence(seed).generate_state(n).tolist()
    init = keras.initializers
    model = keras.Sequential(name="lstm_forecaster")
    model.add(keras.Input(shape=(lookback, n_features)))
    for i in range(model_cfg.layers):  # every LSTM but the last hands its sequence on
        kernel, recurrent, dropout = seeds[3 * i : 3 * i + 3]
        model.add(
            keras.layers.LSTM(
                model_cfg.units,
                return_sequences=i < model_cfg.layers - 1,
                kernel_initializer=init.GlorotUniform(kernel),
                recurrent_initializer=init.Orthogonal(seed=recurrent),
            )
        )
        model.add(keras.layers.Dropout(model_cfg.dropout, seed=dropout))
    model.add(keras.layers.Dense(outputs, kernel_initializer=init.GlorotUniform(seeds[-1])))
    model.compile(
        optimizer=keras.optimizers.Adam(model_cfg.learning_rate), loss="mean_squared_error"
    )
    setattr(model, MARK, True)  # not saved: a loaded copy runs in Keras (no kernels to compile)
    return model


def predict_scaled(model: Any, X: np.ndarray) -> np.ndarray:
    """Deterministic output ``(n, outputs)`` for ``X`` ``(n, lookback, n_features)``: in the Numba
    engine if it may run ``model``, else in Keras' traced predict function."""
    from lstm_core import engine

    if engine.eligible(model):
        return engine.predict(model, X)
    if len(X) == 0:
        return np.empty((0, model.output_shape[-1]), dtype=np.float32)
    return np.asarray(model.predict_on_batch(np.ascontiguousarray(X, dtype=np.float32)))
