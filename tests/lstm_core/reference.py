"""Reference LSTM layer in pure NumPy, written with the tutorial's names.

This module is the executable form of the tutorial "Keras(五)LSTM 长短期记忆模型 原理及实例"
(``/work/shared/seed/keras-lstm-tutorial.txt``). It exists to check faster implementations
(Keras, XLA, fused TensorFlow kernels) against equations a human can read, so it favours
clarity over speed and computes everything in float64.

Forward pass, one step ``t`` (column-vector notation as in the tutorial)::

    f(t) = σ(Wf h(t−1) + Uf x(t) + bf)          forget gate
    i(t) = σ(Wi h(t−1) + Ui x(t) + bi)          input gate
    a(t) = tanh(Wa h(t−1) + Ua x(t) + ba)       candidate ("a" in the tutorial)
    C(t) = C(t−1) ⊙ f(t) + i(t) ⊙ a(t)          cell state
    o(t) = σ(Wo h(t−1) + Uo x(t) + bo)          output gate
    h(t) = o(t) ⊙ tanh(C(t))                    hidden state
    ŷ    = V h(τ) + c                           output layer (linear, see below)

Arrays are batched row vectors: ``x`` has shape ``(batch, time, n_in)``, so ``Wf h`` is
computed as ``h @ Wf.T``. Parameter shapes keep the tutorial's orientation:
``W* (units, units)``, ``U* (units, n_in)``, ``b* (units,)``, ``V (n_out, units)``, ``c (n_out,)``.

Mapping to Keras (``keras.layers.LSTM``; gate order in Keras is **i, f, c, o**, where
Keras's "c" is the tutorial's candidate ``a``), with ``u = units`` and gate index
``k = 0 (i), 1 (f), 2 (a), 3 (o)``::

    kernel           (n_in, 4u)  kernel[:, k*u:(k+1)*u]           = U_k.T   (input weights)
    recurrent_kernel (u, 4u)     recurrent_kernel[:, k*u:(k+1)*u] = W_k.T   (recurrent weights)
    bias             (4u,)       bias[k*u:(k+1)*u]                = b_k
    Dense kernel     (u, n_out)  = V.T;   Dense bias (n_out,) = c

Keras must use ``activation="tanh"`` and ``recurrent_activation="sigmoid"`` (its defaults);
dropout inside the LSTM and the Dropout layers of the tutorial's model are identities at
inference, which is what this reference computes.

Where the tutorial is wrong or ambiguous, this module follows the tutorial's own example code:

* Output layer: the text writes ``ŷ(t) = σ(V h(t) + c)``, but the example ends in
  ``Dense(units=1)`` (linear) trained with ``mean_squared_error``. Here ``ŷ = V h(τ) + c``
  (linear) and the loss is the MSE averaged over batch and outputs, like Keras.
* Only the last step has an output (many-to-one, ``return_sequences=False`` in the last
  layer), so ``ŷ`` is produced from ``h(τ)`` only, not at every ``t``.
* ``δh``: the text says ``δh(t) = Vᵀ(ŷ(t) − y(t))`` and that ``δh`` "does not take part in
  back-propagation". That is wrong: ``h(t)`` feeds all four gates at ``t+1``, so
  ``δh(t) = ∂L/∂h(t) = [output term at t] + Σ_gates W_gᵀ δz_g(t+1)``, where ``δz_g`` is the
  gradient at gate g's pre-activation. ``Vᵀ(ŷ − y)`` is only the output term, and it also
  holds only for the sigmoid + cross-entropy or linear + (½·sum) squared-error pairing; with
  Keras's mean squared error it is ``Vᵀ · 2(ŷ − y)/(batch·n_out)``.
* ``δC`` recursion ``δC(t) = δC(t+1) ⊙ f(t+1) + δh(t) ⊙ o(t) ⊙ (1 − tanh²(C(t)))`` is right,
  provided ``δh(t)`` is the full gradient above, and ``δC(τ+1) = 0``.
* ``∂L/∂Wf = Σ_t [δC(t) ⊙ C(t−1) ⊙ f(t) ⊙ (1 − f(t))] h(t−1)ᵀ`` is right (an outer product,
  summed over the batch too); the other gradients follow the same pattern (see ``backward``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]

# Keras packs the four gates in this order along the last axis of kernel/recurrent_kernel/bias;
# the names are the tutorial's (Keras's "c" gate is the tutorial's candidate "a").
KERAS_GATE_ORDER: tuple[str, ...] = ("i", "f", "a", "o")


@dataclass
class LSTMParams:
    """Parameters of one LSTM layer (+ optional linear output layer), tutorial names/shapes."""

    Wf: Array  # (units, units) recurrent
    Wi: Array
    Wa: Array
    Wo: Array
    Uf: Array  # (units, n_in) input
    Ui: Array
    Ua: Array
    Uo: Array
    bf: Array  # (units,)
    bi: Array
    ba: Array
    bo: Array
    V: Array | None = None  # (n_out, units) output layer
    c: Array | None = None  # (n_out,)

    @property
    def units(self) -> int:
        return int(self.Wf.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.Uf.shape[1])

    def names(self) -> list[str]:
        """Names of the parameters that are set (V, c only with an output layer)."""
        return [f.name for f in fields(LSTMParams) if getattr(self, f.name) is not None]


@dataclass
class Grads(LSTMParams):
    """∂L/∂(parameter) under the same names as ``LSTMParams``, plus ∂L/∂x for stacking."""

    dx: Array | None = None  # (batch, time, n_in)


@dataclass
class Cache:
    """Everything the forward pass computed, per step; arrays are (batch, time, units)."""

    x: Array  # (batch, time, n_in)
    f: Array
    i: Array
    a: Array
    o: Array
    C: Array  # C(t), t = 1..τ
    h: Array  # h(t), t = 1..τ (Keras's return_sequences=True output)
    h0: Array  # (batch, units) initial hidden state h(0)
    C0: Array  # (batch, units) initial cell state C(0)
    y_hat: Array | None  # (batch, n_out) from h(τ), when the params have V, c

    @property
    def h_last(self) -> Array:
        return self.h[:, -1]

    @property
    def C_last(self) -> Array:
        return self.C[:, -1]


def sigmoid(z: Array) -> Array:
    """Logistic σ, split by sign so exp never overflows."""
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _f64(a: ArrayLike) -> Array:
    return np.asarray(a, dtype=np.float64)


def init_params(
    n_in: int, units: int, n_out: int | None = 1, *, seed: int = 0, scale: float = 0.5
) -> LSTMParams:
    """Random parameters (uniform in ±scale), for tests and benchmarks."""
    rng = np.random.default_rng(seed)

    def u(*shape: int) -> Array:
        return rng.uniform(-scale, scale, size=shape)

    out: dict[str, Array | None] = {"V": None, "c": None}
    if n_out is not None:
        out = {"V": u(n_out, units), "c": u(n_out)}
    return LSTMParams(
        Wf=u(units, units), Wi=u(units, units), Wa=u(units, units), Wo=u(units, units),
        Uf=u(units, n_in), Ui=u(units, n_in), Ua=u(units, n_in), Uo=u(units, n_in),
        bf=u(units), bi=u(units), ba=u(units), bo=u(units),
        **out,
    )  # fmt: skip


def forward(
    params: LSTMParams,
    x: ArrayLike,
    h0: ArrayLike | None = None,
    C0: ArrayLike | None = None,
) -> Cache:
    """Run the layer over ``x`` (batch, time, n_in); ŷ comes from the last h (if V is set)."""
    p = params
    x = _f64(x)
    if x.ndim != 3 or x.shape[2] != p.n_in:
        raise ValueError(f"x must be (batch, time, {p.n_in}), got {x.shape}")
    batch, steps, _ = x.shape
    units = p.units
    h_prev = np.zeros((batch, units)) if h0 is None else _f64(h0).copy()
    C_prev = np.zeros((batch, units)) if C0 is None else _f64(C0).copy()
    h0_arr, C0_arr = h_prev.copy(), C_prev.copy()

    store = {k: np.empty((batch, steps, units)) for k in ("f", "i", "a", "o", "C", "h")}
    for t in range(steps):
        xt = x[:, t]
        # Row-vector form of W h(t−1) + U x(t) + b.
        f = sigmoid(h_prev @ p.Wf.T + xt @ p.Uf.T + p.bf)
        i = sigmoid(h_prev @ p.Wi.T + xt @ p.Ui.T + p.bi)
        a = np.tanh(h_prev @ p.Wa.T + xt @ p.Ua.T + p.ba)
        C = C_prev * f + i * a
        o = sigmoid(h_prev @ p.Wo.T + xt @ p.Uo.T + p.bo)
        h = o * np.tanh(C)
        for k, v in (("f", f), ("i", i), ("a", a), ("o", o), ("C", C), ("h", h)):
            store[k][:, t] = v
        h_prev, C_prev = h, C

    y_hat = None
    if p.V is not None:
        if p.c is None:
            raise ValueError("V is set but c is not")
        y_hat = h_prev @ p.V.T + p.c  # linear output, as the example's Dense(1)
    return Cache(x=x, h0=h0_arr, C0=C0_arr, y_hat=y_hat, **store)


def mse_loss(y_hat: ArrayLike, y: ArrayLike) -> float:
    """Keras's ``mean_squared_error``: mean over outputs, then over the batch."""
    d = _f64(y_hat) - _f64(y).reshape(np.shape(y_hat))
    return float(np.mean(d * d))


def mse_grad(y_hat: ArrayLike, y: ArrayLike) -> Array:
    """∂(mse_loss)/∂ŷ = 2(ŷ − y)/(batch·n_out) — the tutorial's (ŷ − y) with MSE's factor."""
    y_hat = _f64(y_hat)
    return 2.0 * (y_hat - _f64(y).reshape(y_hat.shape)) / y_hat.size


def backward(
    params: LSTMParams,
    cache: Cache,
    dy_hat: ArrayLike | None = None,
    *,
    target: ArrayLike | None = None,
    dh_seq: ArrayLike | None = None,
) -> Grads:
    """Back-propagation through time with the tutorial's δh and δC.

    The upstream gradient is ``dy_hat`` (∂L/∂ŷ), or ``target`` (then L = ``mse_loss``), and/or
    ``dh_seq`` (∂L/∂h(t) for every t, shape (batch, time, units), for stacked layers).
    Returns gradients for every parameter under the same names, plus ``dx``.
    """
    p = params
    if target is not None:
        if dy_hat is not None:
            raise ValueError("give dy_hat or target, not both")
        if cache.y_hat is None:
            raise ValueError("target needs an output layer (V, c)")
        dy_hat = mse_grad(cache.y_hat, target)
    batch, steps, units = cache.h.shape
    if dy_hat is None and dh_seq is None:
        raise ValueError("need dy_hat, target or dh_seq")

    # External ∂L/∂h(t): the output layer touches only h(τ) (many-to-one).
    dh_ext = np.zeros((batch, steps, units)) if dh_seq is None else _f64(dh_seq).copy()
    dV = dc = None
    if dy_hat is not None:
        if p.V is None:
            raise ValueError("dy_hat needs an output layer (V, c)")
        dy = _f64(dy_hat).reshape(batch, -1)
        dh_ext[:, -1] += dy @ p.V  # δh(τ) = Vᵀ ∂L/∂ŷ
        dV = dy.T @ cache.h[:, -1]
        dc = dy.sum(axis=0)

    g: dict[str, Array] = {
        name: np.zeros_like(getattr(p, name))
        for name in ("Wf", "Wi", "Wa", "Wo", "Uf", "Ui", "Ua", "Uo", "bf", "bi", "ba", "bo")
    }
    dx = np.zeros_like(cache.x)
    h_prev_all = np.concatenate([cache.h0[:, None], cache.h[:, :-1]], axis=1)
    C_prev_all = np.concatenate([cache.C0[:, None], cache.C[:, :-1]], axis=1)

    # δC(τ+1) = 0 and there are no gates at τ+1, hence zero starts.
    dC_next = np.zeros((batch, units))
    f_next = np.zeros((batch, units))
    dz_next = {k: np.zeros((batch, units)) for k in ("f", "i", "a", "o")}
    for t in range(steps - 1, -1, -1):
        f, i, a, o = cache.f[:, t], cache.i[:, t], cache.a[:, t], cache.o[:, t]
        tanhC = np.tanh(cache.C[:, t])
        h_prev, C_prev, xt = h_prev_all[:, t], C_prev_all[:, t], cache.x[:, t]

        # δh(t): output term plus what h(t) sent into the four gates at t+1
        # (the recurrent path the tutorial's text leaves out).
        dh = (
            dh_ext[:, t]
            + dz_next["f"] @ p.Wf
            + dz_next["i"] @ p.Wi
            + dz_next["a"] @ p.Wa
            + dz_next["o"] @ p.Wo
        )
        # δC(t) = δC(t+1) ⊙ f(t+1) + δh(t) ⊙ o(t) ⊙ (1 − tanh²(C(t)))
        dC = dC_next * f_next + dh * o * (1.0 - tanhC**2)

        # Gradients at the pre-activations: chain rule through σ' = σ(1−σ), tanh' = 1−tanh².
        dz = {
            "f": dC * C_prev * f * (1.0 - f),
            "i": dC * a * i * (1.0 - i),
            "a": dC * i * (1.0 - a**2),
            "o": dh * tanhC * o * (1.0 - o),
        }
        for k, d in dz.items():
            # ∂L/∂W_k = Σ_t δz_k(t) h(t−1)ᵀ, ∂L/∂U_k = Σ_t δz_k(t) x(t)ᵀ, ∂L/∂b_k = Σ_t δz_k(t);
            # the matmul over the batch axis sums the per-sample outer products.
            g["W" + k] += d.T @ h_prev
            g["U" + k] += d.T @ xt
            g["b" + k] += d.sum(axis=0)
        dx[:, t] = dz["f"] @ p.Uf + dz["i"] @ p.Ui + dz["a"] @ p.Ua + dz["o"] @ p.Uo

        dC_next, f_next, dz_next = dC, f, dz

    return Grads(**g, V=dV, c=dc, dx=dx)


# --- Keras mapping -------------------------------------------------------------------------


def from_keras_weights(
    kernel: ArrayLike,
    recurrent_kernel: ArrayLike,
    bias: ArrayLike | None = None,
    dense_kernel: ArrayLike | None = None,
    dense_bias: ArrayLike | None = None,
) -> LSTMParams:
    """Split Keras's packed (i, f, c, o) weights into the tutorial's per-gate matrices."""
    K = _f64(kernel)
    R = _f64(recurrent_kernel)
    units = R.shape[0]
    if K.ndim != 2 or K.shape[1] != 4 * units or R.shape != (units, 4 * units):
        raise ValueError(f"bad shapes kernel {K.shape}, recurrent_kernel {R.shape}")
    B = np.zeros(4 * units) if bias is None else _f64(bias)
    out: dict[str, Any] = {}
    for k, gate in enumerate(KERAS_GATE_ORDER):
        cols = slice(k * units, (k + 1) * units)
        out["U" + gate] = K[:, cols].T.copy()
        out["W" + gate] = R[:, cols].T.copy()
        out["b" + gate] = B[cols].copy()
    if dense_kernel is not None:
        out["V"] = _f64(dense_kernel).T.copy()
        dk_out = out["V"].shape[0]
        out["c"] = np.zeros(dk_out) if dense_bias is None else _f64(dense_bias).copy()
    return LSTMParams(**out)


def to_keras_weights(params: LSTMParams) -> list[Array]:
    """Inverse of ``from_keras_weights``: [kernel, recurrent_kernel, bias(, dense_k, dense_b)].

    Works on ``Grads`` too, which is how gradients are compared with TensorFlow's.
    """
    p = params
    kernel = np.concatenate([getattr(p, "U" + g).T for g in KERAS_GATE_ORDER], axis=1)
    recurrent = np.concatenate([getattr(p, "W" + g).T for g in KERAS_GATE_ORDER], axis=1)
    bias = np.concatenate([getattr(p, "b" + g) for g in KERAS_GATE_ORDER])
    out = [kernel, recurrent, bias]
    if p.V is not None and p.c is not None:
        out += [p.V.T.copy(), p.c.copy()]
    return out


def _activation_name(fn: Any) -> str:
    # Keras stores activations as functions (tanh, sigmoid) or strings; compare by name only,
    # so this module needs no Keras import.
    return fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))


def from_keras_layer(layer: Any, dense: Any | None = None) -> LSTMParams:
    """Load an (ideally trained) ``keras.layers.LSTM`` and optional linear ``Dense`` layer."""
    if _activation_name(layer.activation) != "tanh":
        raise ValueError(f"reference needs activation='tanh', got {layer.activation!r}")
    if _activation_name(layer.recurrent_activation) != "sigmoid":
        raise ValueError(
            f"reference needs recurrent_activation='sigmoid', got {layer.recurrent_activation!r}"
        )
    weights: Sequence[Any] = layer.get_weights()
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if getattr(layer, "use_bias", True) and len(weights) > 2 else None
    dk = db = None
    if dense is not None:
        if _activation_name(dense.activation) != "linear":
            raise ValueError(f"reference needs a linear Dense layer, got {dense.activation!r}")
        dw = dense.get_weights()
        dk = dw[0]
        db = dw[1] if len(dw) > 1 else None
    return from_keras_weights(kernel, recurrent, bias, dk, db)
