"""The fast training loop: the whole train step of a FastLSTMStack model in Numba, no Keras fit.

``build_model``'s "fast" network is FastLSTMStack -> Dropout -> Dense, trained with Adam on
the mean squared error.  Under ``model.fit`` its Numba kernels left about 3 ms of a 15 ms step
to TensorFlow and Keras (a TensorFlow profile of one ``fit`` step, in issue 7's notes: the
masks' XLA program, stacking the weights, the gaps between ops, Adam as many small ops).
This loop runs the same maths without them: each slice of a batch is one call of
``stack_kernels.train_slice`` (dropout masks, stack, Dropout, Dense, loss and all gradients)
on its own thread, and ``stack_kernels.adam_update`` applies Keras' Adam to one flat
parameter vector.

What stays Keras: the weights live in the model's variables between epochs (copied in at
the start, out after every epoch), so callbacks, early stopping and saving see the model as
``fit`` leaves it; the optimizer's moments and step count are read from and written back to
``model.optimizer``, so a second call continues like a second ``fit``.  The validation loss
comes from ``stack_kernels.stack_predict`` on the same weights (32 ms for the benchmark's
300 windows against 55-62 ms for the model's XLA inference, measured in one process).  The
dropout masks are drawn by a counter-based hash (``stack_kernels.dropout_masks``), not by
Keras' RNG, so the loop trains the same network on different (equally distributed) masks
than ``fit`` would.

``eligible(model)`` says whether a model is the network this loop implements;
``lstm_core.train.train_model`` uses the loop only then.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_core.config import TrainingConfig

__all__ = ["eligible", "fit_stack"]


def eligible(model: Any) -> str | None:
    """None if ``fit_stack`` can train ``model``; otherwise why not (for logs)."""
    import keras

    from lstm_core.fast_stack import FastLSTMStack

    layers = list(getattr(model, "layers", []))
    kinds = [type(layer) for layer in layers]
    if kinds != [FastLSTMStack, keras.layers.Dropout, keras.layers.Dense]:
        return "not FastLSTMStack -> Dropout -> Dense"
    stack, _, dense = layers
    if stack.kernel != "numba" or stack.return_sequences:
        return "the stack is not the Numba kernel's last-step output"
    if dense.activation is not keras.activations.linear or not dense.use_bias:
        return "the Dense layer is not linear with a bias"
    if model.loss not in ("mean_squared_error", "mse"):
        return f"loss {model.loss!r} is not the mean squared error"
    opt = getattr(model, "optimizer", None)
    if type(opt) is not keras.optimizers.Adam or opt.amsgrad:
        return "the optimizer is not plain Adam"
    extras = (opt.weight_decay, opt.clipnorm, opt.clipvalue, opt.global_clipnorm)
    if any(e is not None for e in extras) or opt.use_ema or opt.gradient_accumulation_steps:
        return "Adam with weight decay, clipping, EMA or accumulation"
    if isinstance(opt._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return "a learning-rate schedule"
    if any(w.dtype != "float32" for w in model.weights) or model.dtype_policy.name != "float32":
        return "not float32"
    if model.jit_compile:
        return "compiled with jit_compile=True"
    return None


@dataclass
class _Params:
    """One flat float32 vector with the kernels' views: kernel0, wst, bias, dense_w, dense_b."""

    flat: np.ndarray
    views: tuple[np.ndarray, ...]

    @classmethod
    def allocate(cls, n_in: int, units: int, layers: int, horizon: int) -> _Params:
        shapes = [
            (n_in, 4 * units),  # layer 0's input kernel
            (layers, 2 * units, 4 * units),  # [kernel; recurrent] per layer (layer 0: zeros; rec)
            (layers, 4 * units),
            (units, horizon),
            (horizon,),
        ]
        flat = np.zeros(sum(math.prod(s) for s in shapes), np.float32)
        views, pos = [], 0
        for shape in shapes:
            size = math.prod(shape)
            views.append(flat[pos : pos + size].reshape(shape))
            pos += size
        return cls(flat, tuple(views))


def _variable_views(params: _Params, stack: Any, dense: Any) -> list[tuple[Any, np.ndarray]]:
    """(Keras variable, its view in ``params``) for every trainable variable."""
    kernel0, wst, bias, dense_w, dense_b = params.views
    u = stack.units
    pairs = [(stack.kernels[0], kernel0)]
    for i in range(stack.n_layers):
        if i > 0:
            pairs.append((stack.kernels[i], wst[i, :u]))
        pairs += [(stack.recurrents[i], wst[i, u:]), (stack.biases[i], bias[i])]
    return pairs + [(dense.kernel, dense_w), (dense.bias, dense_b)]


def _slices(n: int, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` non-empty (start, stop) row ranges covering ``range(n)``, sizes within 1."""
    cuts = np.linspace(0, n, parts + 1).astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (process-wide): a full collection walks every
    TensorFlow/Keras object in the process (261 ms in benchmarks/bench_train.py's process,
    against 0.7 s epochs), and the training loop makes no reference cycles.  Collection is
    re-enabled on exit if it was enabled on entry."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _mask_key(seed: int, step: int) -> np.uint64:
    """The dropout masks' key of global step ``step`` (splitmix64 of seed and step)."""
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xD6E8FEB86659FD93 + 0x632BE59BD9B4E019) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return np.uint64(z ^ (z >> 31))


def fit_stack(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray | None,
    y_val: np.ndarray | None,
    cfg: TrainingConfig,
    callbacks: Sequence[Any] = (),
) -> dict[str, list[float]]:
    """Train an ``eligible`` model like ``model.fit``; returns the history ('loss', 'val_loss').

    ``X`` (n, T, n_in), ``y`` (n, H); ``cfg``'s epochs, batch size, seed and shuffle apply
    (``train_model`` adds early stopping and the divergence guard as callbacks).  Callbacks get ``on_train_begin/end``,
    ``on_epoch_begin/end`` (with 'loss' and, given validation data, 'val_loss') and the
    train-batch hooks; ``model.stop_training`` ends training after the epoch.
    """
    import keras

    from lstm_core.stack_kernels import adam_update, stack_predict, train_slice, tune_process

    reason = eligible(model)
    if reason is not None:
        raise ValueError(f"fit_stack cannot train this model: {reason}")
    epochs, batch_size, seed = cfg.epochs, cfg.batch_size, cfg.seed
    stack, top_dropout, dense = model.layers
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32).reshape(len(X), -1)
    has_val = X_val is not None and y_val is not None and len(X_val) > 0
    if has_val:
        X_val = np.ascontiguousarray(X_val, dtype=np.float32)
        y_val = np.asarray(y_val, dtype=np.float64).reshape(len(X_val), -1)
    n, horizon = len(X), y.shape[1]
    shape = (X.shape[2], stack.units, stack.n_layers, horizon)
    params, m, v = (_Params.allocate(*shape) for _ in range(3))
    opt = model.optimizer
    opt.build(model.trainable_variables)
    # per variable: its view in params, and Adam's moments with their views in m and v
    slots = []
    for (var, view), (_, m_view), (_, v_view) in zip(
        *(_variable_views(p, stack, dense) for p in (params, m, v)), strict=True
    ):
        index = opt._get_variable_index(var)
        slots.append((var, view, opt._momentums[index], m_view, opt._velocities[index], v_view))
    for var, view, m_var, m_view, v_var, v_view in slots:
        view[...] = keras.ops.convert_to_numpy(var)
        m_view[...] = keras.ops.convert_to_numpy(m_var)
        v_view[...] = keras.ops.convert_to_numpy(v_var)
    step = int(keras.ops.convert_to_numpy(opt.iterations))
    b1, b2 = float(opt.beta_1), float(opt.beta_2)
    one_minus = (np.float32(1.0 - b1), np.float32(1.0 - b2))
    eps = np.float32(opt.epsilon)

    parts = max(1, min(stack.batch_parts, batch_size))
    grads = np.zeros((parts, params.flat.size), np.float32)
    kernel0, wst, bias, dense_w, dense_b = params.views
    history: dict[str, list[float]] = {"loss": []}
    if has_val:
        history["val_loss"] = []
    steps_per_epoch = math.ceil(n / batch_size)
    cbs = keras.callbacks.CallbackList(
        list(callbacks), model=model, epochs=epochs, steps=steps_per_epoch, verbose=0
    )
    tune_process()
    model.stop_training = False
    cbs.on_train_begin()
    base = keras.callbacks.Callback
    batch_hooks = any(
        type(cb).on_train_batch_begin is not base.on_train_batch_begin
        or type(cb).on_train_batch_end is not base.on_train_batch_end
        for cb in callbacks
    )  # Keras' per-batch dispatch costs ~0.1 ms a step: skipped when nobody listens
    workers = max(1, parts - 1)
    with _gc_paused(), ThreadPoolExecutor(workers, thread_name_prefix="fit_stack") as pool:
        for epoch in range(epochs):
            cbs.on_epoch_begin(epoch)
            lr = float(keras.ops.convert_to_numpy(opt.learning_rate))  # callbacks may change it
            # seeded by the global step, so a second call continues the first's sequence
            order = (
                np.random.default_rng([seed, step]).permutation(n) if cfg.shuffle else np.arange(n)
            )
            sse = 0.0
            for b in range(steps_per_epoch):
                if batch_hooks:
                    cbs.on_train_batch_begin(b)
                rows = order[b * batch_size : (b + 1) * batch_size]
                xb, yb = X[rows], y[rows]
                nb = len(rows)
                key = _mask_key(seed, step)
                jobs = [
                    (xb[lo:hi], yb[lo:hi], kernel0, wst, bias, dense_w, dense_b, key, lo, nb,
                     stack.rate, top_dropout.rate, grads[k])
                    for k, (lo, hi) in enumerate(_slices(nb, parts))
                ]  # fmt: skip
                # the pool runs all slices but the last, which this thread runs meanwhile
                futures = [pool.submit(train_slice, *job) for job in jobs[:-1]]
                batch_sse = train_slice(*jobs[-1]) + sum(f.result() for f in futures)
                used = grads[: len(jobs)]
                step += 1
                alpha = np.float32(lr * math.sqrt(1.0 - b2**step) / (1.0 - b1**step))
                adam_update(params.flat, used, m.flat, v.flat, alpha, *one_minus, eps)
                sse += batch_sse
                if batch_hooks:
                    cbs.on_train_batch_end(b, {"loss": batch_sse / (nb * horizon)})
            for var, view, *_ in slots:
                var.assign(view)
            logs = {"loss": sse / (n * horizon)}
            if has_val:  # the slices of the validation windows side by side, as in training
                bounds = _slices(len(X_val), parts)
                futures = [
                    pool.submit(stack_predict, X_val[lo:hi], kernel0, wst, bias)
                    for lo, hi in bounds[:-1]
                ]
                last = stack_predict(X_val[bounds[-1][0] :], kernel0, wst, bias)
                h_top = np.concatenate([f.result() for f in futures] + [last])  # (n_val, u)
                err = (h_top @ dense_w + dense_b).astype(np.float64) - y_val
                logs["val_loss"] = float(np.mean(err**2))
            for key_, value in logs.items():
                history[key_].append(value)
            cbs.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    for _, _, m_var, m_view, v_var, v_view in slots:
        m_var.assign(m_view)
        v_var.assign(v_view)
    opt.iterations.assign(step)
    cbs.on_train_end()
    return history
