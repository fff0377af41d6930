"""The fast engine (``model.backend: fast``): ``lstm_core.model``'s Keras network in Numba."""

from lstm_core.engine.trainer import eligible, fit, predict

__all__ = ["eligible", "fit", "predict"]
