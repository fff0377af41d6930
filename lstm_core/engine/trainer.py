"""The Numba training loop and inference for the plain Keras network of ``lstm_core.model``.

The network is ``keras.layers.LSTM`` layers, each followed by ``Dropout``, then ``Dense``,
compiled with Adam on the mean squared error.  ``fit`` copies its weights into one flat
float32 vector, trains that vector with the kernels of ``lstm_core.engine.kernels`` (each
slice of a batch is one ``train_slice`` call on its own thread; ``adam_update`` is Keras'
Adam on the flat vector) and writes the weights back into the layers after every epoch, so
callbacks, early stopping and saving see the model as ``fit`` would leave it.  Adam's
moments and step count live in an ``AdamState`` owned by the engine, not in the Keras
optimizer.  The dropout masks come from a counter-based hash (``kernels.dropout_masks``),
not Keras' RNG: same distribution, other draws.

``predict`` and ``mc_dropout_samples`` run the same network forward in the kernels (for
evaluation inside a run); the saved model stays the plain Keras one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_core.config import TrainingConfig
from lstm_core.engine.process import engine_settings

__all__ = ["AdamState", "eligible", "fit", "mc_dropout_samples", "predict"]

PARTS = 2  # each batch is cut in this many slices, run side by side on the cores
TOP_KEY = np.uint64(0xD1B54A32D192ED03)  # as kernels.train_slice salts the top Dropout's key


def eligible(model: Any) -> str | None:
    """None if the engine can run ``model``; otherwise why not."""
    import keras

    layers = list(getattr(model, "layers", []))
    if len(layers) < 3 or len(layers) % 2 == 0:
        return "not (LSTM -> Dropout) x L -> Dense"
    lstms, drops, dense = layers[:-1:2], layers[1:-1:2], layers[-1]
    if any(type(x) is not keras.layers.LSTM for x in lstms):
        return "not (LSTM -> Dropout) x L -> Dense"
    if any(type(x) is not keras.layers.Dropout or x.noise_shape is not None for x in drops):
        return "not (LSTM -> Dropout) x L -> Dense"
    if type(dense) is not keras.layers.Dense:
        return "the last layer is not Dense"
    for i, x in enumerate(lstms):
        plain = (
            x.activation is keras.activations.tanh
            and x.recurrent_activation is keras.activations.sigmoid
            and x.use_bias
            and x.dropout == 0.0
            and x.recurrent_dropout == 0.0
            and not (x.go_backwards or x.stateful or x.return_state)
        )
        if not plain or x.return_sequences != (i < len(lstms) - 1):
            return "an LSTM layer with other options than the tutorial's"
    if len({x.rate for x in drops[:-1]}) > 1:
        return "different dropout rates between the LSTM layers"
    if dense.activation is not keras.activations.linear or not dense.use_bias:
        return "the Dense layer is not linear with a bias"
    if model.loss not in ("mean_squared_error", "mse"):
        return f"loss {model.loss!r} is not the mean squared error"
    opt = getattr(model, "optimizer", None)
    if type(opt) is not keras.optimizers.Adam:
        return "the optimizer is not plain Adam"
    conf = opt.get_config()
    extras = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm")
    if conf["amsgrad"] or conf["use_ema"] or conf["gradient_accumulation_steps"]:
        return "Adam with amsgrad, EMA or accumulation"
    if any(conf[k] is not None for k in extras) or isinstance(conf["learning_rate"], dict):
        return "Adam with weight decay, clipping or a learning-rate schedule"
    if any(w.dtype != "float32" for w in model.weights):
        return "not float32"
    if model.jit_compile:
        return "compiled with jit_compile=True"
    return None


@dataclass
class _Net:
    """The network's weights as one flat float32 vector with the kernels' views
    (kernel0, wst, bias, dense_w, dense_b), and which Keras variable each part came from."""

    flat: np.ndarray
    views: tuple[np.ndarray, ...]
    pairs: list[tuple[Any, np.ndarray]]  # (Keras variable, its view in flat)
    rate: float  # Dropout between the LSTM layers
    top_rate: float  # Dropout after the last one

    @classmethod
    def of(cls, model: Any) -> _Net:
        """The layout of ``model`` (an ``eligible`` one), filled with its current weights."""
        import keras

        reason = eligible(model)
        if reason is not None:
            raise ValueError(f"the Numba engine cannot run this model: {reason}")
        lstms, drops, dense = model.layers[:-1:2], model.layers[1:-1:2], model.layers[-1]
        u, n_l = lstms[0].units, len(lstms)
        n_in = lstms[0].cell.kernel.shape[0]
        shapes = [(n_in, 4 * u), (n_l, 2 * u, 4 * u), (n_l, 4 * u), tuple(dense.kernel.shape)]
        shapes.append((dense.units,))
        flat = np.zeros(sum(math.prod(s) for s in shapes), np.float32)
        views, pos = [], 0
        for shape in shapes:
            size = math.prod(shape)
            views.append(flat[pos : pos + size].reshape(shape))
            pos += size
        kernel0, wst, bias, dense_w, dense_b = views
        pairs = [(lstms[0].cell.kernel, kernel0)]  # layer 0's kernel half of wst stays zero
        for i, layer in enumerate(lstms):
            if i > 0:
                pairs.append((layer.cell.kernel, wst[i, :u]))
            pairs += [(layer.cell.recurrent_kernel, wst[i, u:]), (layer.cell.bias, bias[i])]
        pairs += [(dense.kernel, dense_w), (dense.bias, dense_b)]
        for var, view in pairs:
            view[...] = keras.ops.convert_to_numpy(var)
        rate = drops[0].rate if n_l > 1 else 0.0
        return cls(flat, tuple(views), pairs, float(rate), float(drops[-1].rate))

    def write_back(self) -> None:
        for var, view in self.pairs:
            var.assign(view)


@dataclass
class AdamState:
    """Adam's first and second moments (flat, as the parameters) and its step count."""

    m: np.ndarray
    v: np.ndarray
    step: int = 0


def _slices(n: int, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` non-empty (start, stop) row ranges covering ``range(n)``, sizes within 1."""
    cuts = np.linspace(0, n, parts + 1).astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]


def _mask_key(seed: int, step: int) -> np.uint64:
    """The dropout masks' key of global step ``step`` (splitmix64 of seed and step)."""
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xD6E8FEB86659FD93 + 0x632BE59BD9B4E019) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return np.uint64(z ^ (z >> 31))


def _cores() -> int:
    """Cores this process may run on: fewer than the machine's when it is pinned (e.g. one
    tuning worker per core), and then a batch is cut in no more slices than that."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _side_by_side(pool: ThreadPoolExecutor, calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` on the pool, the last one on this thread meanwhile; results in order."""
    futures = [pool.submit(c) for c in calls[:-1]]
    last = calls[-1]()
    return [f.result() for f in futures] + [last]


def _predict_rows(pool, net: _Net, X: np.ndarray, n_samples: int = 0, seed: int = 0):
    """The network's output for ``X``: deterministic (``n_samples`` 0) or ``n_samples``
    Monte Carlo dropout passes ``(n_samples · n, H)``, sample-major, cut across the cores."""
    from lstm_core.engine.kernels import predict_slice

    kernel0, wst, bias, dense_w, dense_b = net.views
    n = len(X)
    if n_samples == 0:  # rows cut in slices
        jobs = [(X[lo:hi], np.uint64(0), lo, n, 0.0, 0.0, 1) for lo, hi in _slices(n, PARTS)]
    else:  # samples cut in slices; each slice's rows are its samples of every window
        key = _mask_key(seed, 2**62)  # far from training's keys (steps from 0): other masks
        jobs = [
            (X, key, lo * n, n_samples * n, net.rate, net.top_rate, hi - lo)
            for lo, hi in _slices(n_samples, PARTS)
        ]

    def run(x, key, row0, n_total, rate, top_rate, repeats) -> np.ndarray:
        return predict_slice(x, kernel0, wst, bias, dense_w, dense_b, key, row0, n_total, rate,
                             top_rate, repeats)  # fmt: skip

    return np.concatenate(_side_by_side(pool, [lambda job=job: run(*job) for job in jobs]))


def predict(model: Any, X: np.ndarray) -> np.ndarray:
    """Deterministic output ``(n, horizon)`` of ``model`` (dropout off) for ``X``."""
    net = _Net.of(model)
    X = np.ascontiguousarray(X, dtype=np.float32)
    if len(X) == 0:
        return np.empty((0, net.views[-1].size), np.float32)
    with engine_settings(), ThreadPoolExecutor(PARTS - 1) as pool:
        return _predict_rows(pool, net, X)


def mc_dropout_samples(model: Any, X: np.ndarray, n_samples: int, seed: int = 0) -> np.ndarray:
    """``n_samples`` outputs ``(n_samples, n, horizon)`` with dropout active, as in training."""
    net = _Net.of(model)
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, horizon = len(X), net.views[-1].size
    if n == 0 or n_samples == 0:
        return np.empty((n_samples, n, horizon), np.float32)
    with engine_settings(), ThreadPoolExecutor(PARTS - 1) as pool:
        out = _predict_rows(pool, net, X, n_samples, seed)
    return out.reshape(n_samples, n, horizon)


def fit(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray | None,
    y_val: np.ndarray | None,
    cfg: TrainingConfig,
    callbacks: Sequence[Any] = (),
    adam: AdamState | None = None,
) -> tuple[dict[str, list[float]], AdamState]:
    """Train ``model`` like ``model.fit``; returns the history ('loss', 'val_loss') and Adam's
    state (pass it to a later call to continue like a second ``fit``).

    ``X`` (n, T, n_in), ``y`` (n, H); ``cfg``'s epochs, batch size, seed and shuffle apply.
    Callbacks get ``on_train_begin/end``, ``on_epoch_begin/end`` (with 'loss' and, given
    validation data, 'val_loss') and the train-batch hooks; ``model.stop_training`` ends
    training after the epoch.  Learning rate, β₁, β₂ and ε are the model's Adam's.
    """
    import keras

    from lstm_core.engine.kernels import adam_update, train_slice

    net = _Net.of(model)
    epochs, batch_size, seed = cfg.epochs, cfg.batch_size, cfg.seed
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32).reshape(len(X), -1)
    has_val = X_val is not None and y_val is not None and len(X_val) > 0
    if has_val:
        X_val = np.ascontiguousarray(X_val, dtype=np.float32)
        y_val = np.asarray(y_val, dtype=np.float64).reshape(len(X_val), -1)
    n, horizon = len(X), y.shape[1]
    if adam is None:
        adam = AdamState(np.zeros_like(net.flat), np.zeros_like(net.flat))
    opt = model.optimizer
    b1, b2 = float(opt.beta_1), float(opt.beta_2)
    one_minus = (np.float32(1.0 - b1), np.float32(1.0 - b2))
    eps = np.float32(opt.epsilon)

    parts = max(1, min(PARTS, batch_size, _cores()))
    grads = np.zeros((parts, net.flat.size), np.float32)
    kernel0, wst, bias, dense_w, dense_b = net.views
    history: dict[str, list[float]] = {"loss": []}
    if has_val:
        history["val_loss"] = []
    steps_per_epoch = math.ceil(n / batch_size)
    cbs = keras.callbacks.CallbackList(
        list(callbacks), model=model, epochs=epochs, steps=steps_per_epoch, verbose=0
    )
    model.stop_training = False
    base = keras.callbacks.Callback
    batch_hooks = any(
        type(cb).on_train_batch_begin is not base.on_train_batch_begin
        or type(cb).on_train_batch_end is not base.on_train_batch_end
        for cb in callbacks
    )  # Keras' per-batch dispatch has a cost: skipped when nobody listens
    cbs.on_train_begin()
    with engine_settings(), ThreadPoolExecutor(max(1, parts - 1)) as pool:
        for epoch in range(epochs):
            cbs.on_epoch_begin(epoch)
            lr = float(keras.ops.convert_to_numpy(opt.learning_rate))  # callbacks may change it
            # seeded by the global step, so a second call continues the first's sequence
            order = (
                np.random.default_rng([seed, adam.step]).permutation(n)
                if cfg.shuffle
                else np.arange(n)
            )
            sse = 0.0
            for b in range(steps_per_epoch):
                if batch_hooks:
                    cbs.on_train_batch_begin(b)
                rows = order[b * batch_size : (b + 1) * batch_size]
                xb, yb = X[rows], y[rows]
                nb = len(rows)
                key = _mask_key(seed, adam.step)
                jobs = [
                    (xb[lo:hi], yb[lo:hi], kernel0, wst, bias, dense_w, dense_b, key, lo, nb,
                     net.rate, net.top_rate, grads[k])
                    for k, (lo, hi) in enumerate(_slices(nb, parts))
                ]  # fmt: skip
                batch_sse = sum(
                    _side_by_side(pool, [lambda job=job: train_slice(*job) for job in jobs])
                )
                adam.step += 1
                alpha = np.float32(lr * math.sqrt(1.0 - b2**adam.step) / (1.0 - b1**adam.step))
                adam_update(net.flat, grads[: len(jobs)], adam.m, adam.v, alpha, *one_minus, eps)
                sse += batch_sse
                if batch_hooks:
                    cbs.on_train_batch_end(b, {"loss": batch_sse / (nb * horizon)})
            net.write_back()
            logs = {"loss": sse / (n * horizon)}
            if has_val:
                pred = _predict_rows(pool, net, X_val)
                logs["val_loss"] = float(np.mean((pred.astype(np.float64) - y_val) ** 2))
            for name, value in logs.items():
                history[name].append(value)
            cbs.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    cbs.on_train_end()
    return history, adam
