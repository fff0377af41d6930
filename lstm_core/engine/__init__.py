"""The fast engine (``model.backend: fast``): Numba kernels, training loop, Adam, weights to and
from the plain Keras network of ``lstm_core.model``."""

from lstm_core.engine.trainer import eligible, fit, mc_dropout_samples, predict

__all__ = ["eligible", "fit", "mc_dropout_samples", "predict"]
