"""Training and inference of ``lstm_core.model``'s plain Keras network in the Numba kernels.

``fit`` trains the weights as one flat float32 vector (each slice of a batch one ``train_slice``
call on its own thread; Keras' Adam with the engine's moments and step) and writes them back after
every epoch, so callbacks, early stopping and saving see the model as ``model.fit`` leaves it.
Dropout masks come from a counter-based hash, not Keras' RNG: same distribution, other draws.
"""

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Self

import numpy as np

from lstm_core.config import TrainingConfig
from lstm_core.engine.process import engine_settings

MARK = "lstm_core_network"  # set by build_model on the network it builds, which the engine runs
PARTS = 2  # each batch is cut in this many slices, run side by side on the cores
CHUNK = 32  # rows per inference call: bounds the activations it keeps (about 8·L·T·u floats a row)


def eligible(model: Any) -> bool:
    """Whether the engine may run ``model``: built by :func:`lstm_core.model.build_model` in this
    process (a loaded or hand-made network runs in Keras), in float32."""
    return getattr(model, MARK, False) and all(w.dtype == "float32" for w in model.weights)


@dataclass
class _Net:
    """The model's weights as one flat float32 vector, viewed as the kernels' ``params``."""

    flat: np.ndarray
    views: tuple[np.ndarray, ...]  # kernel0, wst, bias, dense_w, dense_b
    pairs: list[tuple[Any, np.ndarray]]  # (Keras variable, its view in flat)
    rate: float  # Dropout between the LSTM layers
    top_rate: float  # Dropout after the last one

    @classmethod
    def of(cls, model: Any) -> Self:
        """The layout of ``model``, filled with its current weights."""
        import keras

        if not eligible(model):
            raise ValueError("the Numba engine runs only build_model's float32 network")
        lstms, drops, dense = model.layers[:-1:2], model.layers[1:-1:2], model.layers[-1]
        u, n_l, n_in, h = lstms[0].units, len(lstms), lstms[0].cell.kernel.shape[0], dense.units
        shapes = [(n_in, 4 * u), (n_l, 2 * u, 4 * u), (n_l, 4 * u), (u, h), (h,)]
        sizes = [math.prod(s) for s in shapes]
        flat = np.zeros(sum(sizes), np.float32)
        chunks = np.split(flat, np.cumsum(sizes)[:-1])
        views = tuple(c.reshape(s) for c, s in zip(chunks, shapes, strict=True))
        kernel0, wst, bias, dense_w, dense_b = views
        pairs = [(dense.kernel, dense_w), (dense.bias, dense_b)]
        for i, cell in enumerate(x.cell for x in lstms):  # layer 0's kernel half of wst stays 0
            kernel = (cell.kernel, kernel0 if i == 0 else wst[i, :u])
            pairs += [kernel, (cell.recurrent_kernel, wst[i, u:]), (cell.bias, bias[i])]
        for var, view in pairs:
            view[...] = keras.ops.convert_to_numpy(var)
        rate = drops[0].rate if n_l > 1 else 0.0
        return cls(flat, views, pairs, float(rate), float(drops[-1].rate))

    def write_back(self) -> None:
        for var, view in self.pairs:
            var.assign(view)


def _slices(n: int, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` non-empty (start, stop) ranges covering ``range(n)``, sizes within 1."""
    cuts = np.linspace(0, n, parts + 1).astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]


def _mask_key(seed: int, step: int) -> np.uint64:
    """The dropout masks' key of global step ``step`` (splitmix64 of seed and step)."""
    from lstm_core.engine.kernels import splitmix64

    z = (seed * 0x9E3779B97F4A7C15 + step * 0xD6E8FEB86659FD93 + 0x632BE59BD9B4E019) % 2**64
    return np.uint64(splitmix64(np.uint64(z)))


def _parts(most: int = PARTS) -> int:
    """Slices per batch: at most one per core this process may use (a pinned worker has fewer)."""
    pinned = getattr(os, "sched_getaffinity", None)  # Linux only
    return max(1, min(most, len(pinned(0)) if pinned else os.cpu_count() or 1))


def _side_by_side(pool: ThreadPoolExecutor, calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` on the pool, the last one on this thread meanwhile; results in order."""
    futures = [pool.submit(c) for c in calls[:-1]]
    last = calls[-1]()
    return [f.result() for f in futures] + [last]


def _outputs(pool: Any, parts: int, net: _Net, X: np.ndarray) -> np.ndarray:
    """Deterministic output ``(n, H)`` for ``X`` (dropout off), in slices run side by side."""
    from lstm_core.engine.kernels import forward

    def rows(lo: int, hi: int) -> np.ndarray:
        # in chunks: forward keeps every step's activations of the rows it runs
        chunks = [(a, min(a + CHUNK, hi)) for a in range(lo, hi, CHUNK)]
        outs = [
            forward(X[a:b], net.views, np.uint64(0), a, len(X), 0.0, 0.0)[-1] for a, b in chunks
        ]
        return np.concatenate(outs)

    return np.concatenate(_side_by_side(pool, [partial(rows, *s) for s in _slices(len(X), parts)]))


def predict(model: Any, X: np.ndarray) -> np.ndarray:
    """Deterministic output ``(n, outputs)`` of ``model`` (dropout off) for ``X``."""
    net = _Net.of(model)
    X = np.ascontiguousarray(X, dtype=np.float32)
    if len(X) == 0:
        return np.empty((0, net.views[-1].size), np.float32)
    parts = _parts()
    with engine_settings(), ThreadPoolExecutor(max(1, parts - 1)) as pool:
        return _outputs(pool, parts, net, X)


def fit(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray | None,
    y_val: np.ndarray | None,
    cfg: TrainingConfig,
    callbacks: Sequence[Any] = (),
) -> dict[str, list[float]]:
    """Train ``model`` like ``model.fit`` from a fresh Adam (its lr, β₁, β₂, ε) on ``X`` (n, T,
    n_in), ``y`` (n, H); returns the history.  Callbacks get the train, epoch and batch hooks."""
    import keras

    from lstm_core.engine.kernels import adam_update, train_slice

    net, opt = _Net.of(model), model.optimizer
    if type(opt) is not keras.optimizers.Adam:  # build_model's; another one was set since
        raise ValueError(f"the Numba engine trains with Adam, not {type(opt).__name__}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32).reshape(len(X), -1)
    has_val = X_val is not None and y_val is not None and len(X_val) > 0
    if has_val:
        X_val = np.ascontiguousarray(X_val, dtype=np.float32)
        y_val = np.asarray(y_val, dtype=np.float64).reshape(len(X_val), -1)
    n, n_out, size = len(X), y.shape[1], cfg.batch_size
    m, v, step = np.zeros_like(net.flat), np.zeros_like(net.flat), 0  # Adam's moments and step
    b1, b2 = float(opt.beta_1), float(opt.beta_2)
    adam_args = (np.float32(1.0 - b1), np.float32(1.0 - b2), np.float32(opt.epsilon))
    parts = _parts(min(PARTS, size))
    grads = np.zeros((parts, net.flat.size), np.float32)
    history: dict[str, list[float]] = {}
    steps = math.ceil(n / size)
    cbs = keras.callbacks.CallbackList(
        list(callbacks), model=model, epochs=cfg.epochs, steps=steps, verbose=0
    )
    hooks, base = ("on_train_batch_begin", "on_train_batch_end"), keras.callbacks.Callback
    # Keras' per-batch dispatch has a cost: skipped when nobody listens
    batch_hooks = any(getattr(type(c), h) is not getattr(base, h) for c in callbacks for h in hooks)
    model.stop_training = False
    cbs.on_train_begin()
    with engine_settings(), ThreadPoolExecutor(max(1, parts - 1)) as pool:
        for epoch in range(cfg.epochs):
            cbs.on_epoch_begin(epoch)
            lr = float(keras.ops.convert_to_numpy(opt.learning_rate))  # callbacks may change it
            rng = np.random.default_rng([cfg.seed, step])  # each epoch its own order
            order = rng.permutation(n) if cfg.shuffle else np.arange(n)
            sse = 0.0
            for b in range(steps):
                if batch_hooks:
                    cbs.on_train_batch_begin(b)
                rows = order[b * size : (b + 1) * size]
                xb, yb, nb, key = X[rows], y[rows], len(rows), _mask_key(cfg.seed, step)
                calls = [
                    partial(train_slice, xb[lo:hi], yb[lo:hi], net.views, key, lo, nb, net.rate,
                            net.top_rate, grads[k])
                    for k, (lo, hi) in enumerate(_slices(nb, parts))
                ]  # fmt: skip
                batch_sse = sum(_side_by_side(pool, calls))
                step += 1
                alpha = np.float32(lr * math.sqrt(1.0 - b2**step) / (1.0 - b1**step))
                adam_update(net.flat, grads[: len(calls)], m, v, alpha, *adam_args)
                sse += batch_sse
                if batch_hooks:
                    cbs.on_train_batch_end(b, {"loss": batch_sse / (nb * n_out)})
            net.write_back()
            logs = {"loss": sse / (n * n_out)}
            if has_val:
                pred = _outputs(pool, parts, net, X_val).astype(np.float64)
                logs["val_loss"] = float(np.mean((pred - y_val) ** 2))
            for name, value in logs.items():
                history.setdefault(name, []).append(value)
            cbs.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    cbs.on_train_end()
    return history
