"""The fast engine: Numba kernels, the training loop, Adam, and copying weights to/from Keras.

It trains and runs the plain Keras network of ``lstm_core.model`` (``model.backend: fast``);
``lstm_core.train.train_model`` picks it.
"""

from lstm_core.engine.trainer import AdamState, eligible, fit, mc_dropout_samples, predict

__all__ = ["AdamState", "eligible", "fit", "mc_dropout_samples", "predict"]
