"""FastLSTMStack: the tutorial's whole LSTM stack (L x LSTM(u) + Dropout) as one wavefront loop.

A stack of L LSTM layers over T steps is L·T dependent cell steps when run layer by layer, and
on a CPU each step is a tiny matmul whose cost is mostly the loop's own overhead.  But layer l
at step t only needs layer l-1 at step t and layer l at step t-1, so all layers can advance
together along the anti-diagonal ("wavefront"): in wave w, layer l computes step t = w - l.
That is T + L - 1 waves instead of L·T steps, each one batched matmul
``[L, B, 2u] @ [L, 2u, 4u]`` (input and recurrent weights side by side).

The maths is exactly ``keras.layers.LSTM`` stacked with ``keras.layers.Dropout(rate)`` between
layers (gate order i, f, c, o; tanh / sigmoid; Keras' initializers and ``unit_forget_bias``),
so the weights of layer l map one to one onto a Keras LSTM (``layer_weights``) and onto
``lstm_core.reference``.  Dropout between layers draws an independent Bernoulli(1 - rate)
mask per (layer, step, sample, unit), scaled by 1 / (1 - rate), as ``Dropout`` does on a
sequence.  The Dropout after the last layer stays a separate Keras layer.

The backward pass is hand-written BPTT (the tutorial's δh / δC recursion, see
``reference.backward``) run as a reverse wavefront; weight gradients are summed over all steps
afterwards by one batched matmul.

Training uses both cores: the batch is cut in ``batch_parts`` slices, each run forward and
backward on its own, which TensorFlow's inter-op threads execute side by side.  That only
works if the model's train step is *not* jit-compiled as a whole (XLA would inline the slices
into one single-threaded program), so ``build_model`` compiles these backends with
``jit_compile=False``.  TensorFlow backend only.

Two kernels run a slice's training pass (``kernel``):

* ``"numba"`` (default): ``lstm_core.stack_kernels``, compiled CPU loops with BLAS matmuls,
  layer by layer, called through ``tf.numpy_function``; float32 and float64;
* ``"xla"``: the wavefront above as XLA programs (slower here: XLA's per-op overhead on 63
  small waves; see ``lstm_core.stack_kernels`` and benchmarks/bench_stack.py).

Both draw the same dropout masks from the same seed and compute the same maths.  Inference
(and Monte Carlo dropout) always uses the XLA wavefront program: it saves nothing.

``lstm_core.train.train_model`` trains the "fast" network (this layer -> Dropout -> Dense)
without ``model.fit``, in ``lstm_core.stack_trainer``'s Numba loop on the same kernels;
``model.fit`` on this layer remains the path for anything else (``TrainingConfig.loop``).
"""

from __future__ import annotations

import functools
from typing import Any

import keras

from lstm_core.fast_lstm import cell_backward, cell_forward, gate_affine

__all__ = ["KERNELS", "FastLSTMStack", "wavefront_lstm_infer", "wavefront_lstm_stack"]

KERNELS = ("numba", "xla")


def _valid(w: Any, n_layers: int, steps: Any, dtype: Any) -> Any:
    """(L, 1, 1) 1.0 where layer l has a real step t = w - l in wave w, else 0.0."""
    import tensorflow as tf

    t = w - tf.range(n_layers)
    return tf.cast((t >= 0) & (t < steps), dtype)[:, None, None]


def _static_steps(x: Any) -> int:
    if x.shape[1] is None:
        raise ValueError("FastLSTMStack needs a fixed number of time steps (input shape[1])")
    return int(x.shape[1])


def _mask_at(masks: Any, w: Any) -> Any:
    import tensorflow as tf

    # A (1, ...) mask tensor (no dropout: ones) is used for every wave.
    return masks[tf.minimum(w, tf.shape(masks)[0] - 1)]


def _forward(x, h0, c0, kernel0, wst, bias, masks, save: bool):
    """Wavefront forward pass; with ``save`` also every wave's inputs and gates for BPTT."""
    import tensorflow as tf

    n_layers, units = wst.shape[0], wst.shape[2] // 4
    n_in, dtype = x.shape[-1], x.dtype
    scale, shift = gate_affine(units, dtype)
    batch, steps = tf.shape(x)[0], _static_steps(x)
    waves = steps + n_layers - 1
    xt = tf.transpose(x, [1, 0, 2])  # (T, B, n_in)
    # Layer 0's input projection for every step, off the sequential chain; zero for the
    # L - 1 trailing waves where layer 0 has nothing left to do.
    xz = tf.reshape(tf.matmul(tf.reshape(xt, [-1, n_in]), kernel0), [steps, batch, 4 * units])
    xz = tf.pad(xz, [[0, n_layers - 1], [0, 0], [0, 0]])  # (W, B, 4u)
    zero_in = tf.zeros([1, batch, units], dtype)
    b = bias[:, None, :]  # (L, 1, 4u)
    pad_rest = [[0, n_layers - 1], [0, 0], [0, 0]]

    def step(w, h, c, top_acc, a_acc, g_acc):
        # Input of layer l >= 1 is layer l-1's output from the previous wave (same step t).
        inp = tf.concat([zero_in, h[:-1] * _mask_at(masks, w)], 0)
        a = tf.concat([inp, h], -1)  # (L, B, 2u): [input, h(t-1)] of every layer
        z = tf.matmul(a, wst) + b + tf.pad(xz[w][None], pad_rest)  # (L, B, 4u)
        g, c_new, h_new = cell_forward(z, c, scale, shift, units)
        v = _valid(w, n_layers, steps, dtype)
        # Layers outside their T steps keep their state (zeros before, final after).
        h_next = v * h_new + (1 - v) * h
        c_next = v * c_new + (1 - v) * c
        top_acc = top_acc.write(w, h_next[-1])
        if save:
            a_acc = a_acc.write(w, a)
            g_acc = g_acc.write(w, tf.concat([g, c_new, c], -1))
        return w + 1, h_next, c_next, top_acc, a_acc, g_acc

    def ta(size: Any) -> Any:
        return tf.TensorArray(dtype, size=size)

    acc_size = waves if save else 0
    _, h_last, c_last, top_acc, a_acc, g_acc = tf.while_loop(
        lambda w, *_: w < waves,
        step,
        (tf.constant(0), h0, c0, ta(waves), ta(acc_size), ta(acc_size)),
        maximum_iterations=waves,
    )
    top = tf.transpose(top_acc.stack()[n_layers - 1 :], [1, 0, 2])  # (B, T, u)
    if not save:
        return top, h_last, c_last
    # a: (W, L, B, 2u); g: (W, L, B, 6u) gates i, f, a, o, C(t), C(t-1)
    return top, h_last, c_last, a_acc.stack(), g_acc.stack()


def _backward(x, kernel0, wst, masks, a_all, g_all, d_seq, d_h_last, d_c_last):
    """Reverse wavefront BPTT; returns gradients of (x, h0, c0, kernel0, wst, bias)."""
    import tensorflow as tf

    n_layers, units = wst.shape[0], wst.shape[2] // 4
    n_in, dtype = x.shape[-1], x.dtype
    batch, steps = tf.shape(x)[0], _static_steps(x)
    waves = steps + n_layers - 1
    # Upstream gradient of the top sequence, placed at the waves that produced it.
    d_top = tf.pad(tf.transpose(d_seq, [1, 0, 2]), [[n_layers - 1, 0], [0, 0], [0, 0]])
    top_only = tf.one_hot(n_layers - 1, n_layers, dtype=dtype)[:, None, None]

    def back_step(w, gh, gc, dz_acc):
        # gh, gc: dL/dh and dL/dC of each layer's state after wave w.
        gh = gh + top_only * d_top[w][None]
        gcs = g_all[w]
        v = _valid(w, n_layers, steps, dtype)
        dz, dc = cell_backward(  # δC(t): the tutorial's recursion
            gh, gc, gcs[..., : 4 * units], gcs[..., 4 * units : 5 * units],
            gcs[..., 5 * units :], units,
        )  # fmt: skip
        dz = v * dz
        da = tf.matmul(dz, wst, transpose_b=True)  # (L, B, 2u)
        # Layer l's input was layer l-1's masked output: route that gradient down a layer.
        d_below = tf.concat(
            [da[1:, :, :units] * _mask_at(masks, w), tf.zeros_like(da[:1, :, :units])], 0
        )
        gh = (1 - v) * gh + da[..., units:] + d_below
        gc = (1 - v) * gc + v * dc * gcs[..., units : 2 * units]
        return w - 1, gh, gc, dz_acc.write(w, dz)

    _, dh0, dc0, dz_acc = tf.while_loop(
        lambda w, *_: w >= 0,
        back_step,
        (tf.constant(waves - 1), d_h_last, d_c_last, tf.TensorArray(dtype, size=waves)),
        maximum_iterations=waves,
    )
    dz_all = dz_acc.stack()  # (W, L, B, 4u), zero where a layer had no step
    # Weight gradients summed over waves and batch: one batched matmul.
    a_l = tf.reshape(tf.transpose(a_all, [1, 0, 2, 3]), [n_layers, -1, 2 * units])
    dz_l = tf.reshape(tf.transpose(dz_all, [1, 0, 2, 3]), [n_layers, -1, 4 * units])
    d_wst = tf.matmul(a_l, dz_l, transpose_a=True)  # (L, 2u, 4u)
    d_bias = tf.reduce_sum(dz_l, axis=1)
    dz0 = tf.reshape(dz_all[:steps, 0], [-1, 4 * units])  # layer 0: wave = step
    xt = tf.reshape(tf.transpose(x, [1, 0, 2]), [-1, n_in])
    d_kernel0 = tf.matmul(xt, dz0, transpose_a=True)
    dx = tf.reshape(tf.matmul(dz0, kernel0, transpose_b=True), [steps, batch, n_in])
    return tf.transpose(dx, [1, 0, 2]), dh0, dc0, d_kernel0, d_wst, d_bias


def _ones_mask(n_layers: int, units: int, dtype: Any) -> Any:
    import tensorflow as tf

    return tf.ones([1, max(n_layers - 1, 1), 1, units], dtype)


def _train_forward(x, h0, c0, kernel0, wst, bias, seed, rate: float):
    """Forward pass saving activations; draws the dropout masks itself (from ``seed``)."""
    masks = _dropout_masks(x, wst.shape[0], wst.shape[2] // 4, seed, rate)
    return (*_forward(x, h0, c0, kernel0, wst, bias, masks, save=True), masks)


def _dropout_masks(x: Any, n_layers: int, units: int, seed: Any, rate: float) -> Any:
    import tensorflow as tf

    if rate <= 0.0 or n_layers < 2:
        return _ones_mask(n_layers, units, x.dtype)
    shape = [_static_steps(x) + n_layers - 1, n_layers - 1, tf.shape(x)[0], units]
    # threefry: XLA's default random algorithm on CPU is ~100x slower for this.
    keep = tf.random.stateless_uniform(shape, seed, dtype=x.dtype, alg="threefry")
    return tf.cast(keep >= rate, x.dtype) / (1.0 - rate)


def _infer_forward(x, h0, c0, kernel0, wst, bias, seed, rate: float):
    """Forward pass without saved activations (dropout active when ``rate`` > 0)."""
    masks = _dropout_masks(x, wst.shape[0], wst.shape[2] // 4, seed, rate)
    return _forward(x, h0, c0, kernel0, wst, bias, masks, save=False)


@functools.cache
def _compiled() -> tuple[Any, Any, Any]:
    """XLA-compiled (training forward, backward, inference forward); built on first use."""
    import tensorflow as tf

    # No reduce_retracing: a relaxed (None) shape would lose the static layer, unit and step
    # counts the loops are built from; XLA compiles per concrete shape anyway.
    return tuple(
        tf.function(f, jit_compile=True) for f in (_train_forward, _backward, _infer_forward)
    )


@functools.cache
def _masks_program() -> Any:
    """The dropout masks of one slice as an XLA program (threefry needs XLA on CPU)."""
    import tensorflow as tf

    return tf.function(_dropout_masks, jit_compile=True)


def _numba_forward(x, h0, c0, kernel0, wst, bias, seed, rate: float) -> tuple[Any, ...]:
    """One slice's forward pass by ``stack_kernels.stack_forward``; returns what ``_numba_backward``
    needs: (top, h_last, c_last, *saved activations, masks)."""
    import tensorflow as tf

    n_layers, units = wst.shape[0], wst.shape[2] // 4
    if rate > 0.0 and n_layers > 1:
        masks = _masks_program()(x, n_layers, units, seed, rate)  # (W, L-1, B, u)
    else:  # an empty first axis tells the kernel "no dropout"
        masks = tf.zeros([0, max(n_layers - 1, 1), tf.shape(x)[0], units], x.dtype)
    outs = tf.numpy_function(
        _call_forward, [x, kernel0, wst, bias, masks, h0, c0], [x.dtype] * 8, stateful=False
    )
    steps = _static_steps(x)
    outs[0].set_shape([x.shape[0], steps, units])
    outs[1].set_shape(h0.shape)
    outs[2].set_shape(c0.shape)
    return (*outs, masks)


def _numba_backward(x, kernel0, wst, fwd_out, d_seq, d_h_last, d_c_last) -> list[Any]:
    """Gradients of (x, h0, c0, kernel0, wst, bias) by ``stack_kernels.stack_backward``."""
    import tensorflow as tf

    saved, masks = fwd_out[3:8], fwd_out[8]
    grads = tf.numpy_function(
        _call_backward,
        [x, kernel0, wst, masks, *saved, d_seq, d_h_last, d_c_last],
        [x.dtype] * 6,
        stateful=False,
    )
    for g, like in zip(grads, (x, d_h_last, d_c_last, kernel0, wst), strict=False):
        g.set_shape(like.shape)
    grads[5].set_shape([wst.shape[0], wst.shape[2]])
    return grads


def _call_forward(*arrays: Any) -> Any:
    from lstm_core.stack_kernels import stack_forward, tune_process

    tune_process()
    return stack_forward(*arrays)


def _call_backward(*arrays: Any) -> Any:
    from lstm_core.stack_kernels import stack_backward

    return stack_backward(*arrays)


def _numba_ok(dtype: Any) -> bool:
    """Whether the Numba kernels can run here: float32/float64, and not inside an XLA program
    (an outer ``jit_compile=True`` cannot compile a ``numpy_function``)."""
    import tensorflow as tf

    if tf.as_dtype(dtype) not in (tf.float32, tf.float64):
        return False
    try:
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TensorFlow moved its internals: play safe
        return False
    return not control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def wavefront_lstm_stack(
    x: Any,
    h0: Any,
    c0: Any,
    kernel0: Any,
    wst: Any,
    bias: Any,
    dropout: float = 0.0,
    seed: Any = None,
    parts: int = 1,
    kernel: str = "numba",
):
    """Run L stacked LSTM layers over ``x`` (B, T, n_in), for training.

    ``h0``, ``c0``: (L, B, u) initial states.  ``kernel0``: (n_in, 4u) input kernel of layer 0.
    ``wst``: (L, 2u, 4u), layer l's ``[kernel; recurrent_kernel]`` stacked (layer 0's kernel
    half is unused: zeros).  ``bias``: (L, 4u).  ``dropout``: rate of the Dropout between
    layers, drawn from ``seed`` (int32 (2,)), independently per (layer, step, sample, unit).
    Returns (top layer's sequence (B, T, u), h_last (L, B, u), c_last (L, B, u)),
    differentiable in x, h0, c0 and the weights (hand-written BPTT).

    The batch is cut into ``parts`` slices whose forward and backward passes are separate
    ops with no data between them, so TensorFlow's inter-op threads run them on different
    cores; the weight gradients are summed.  ``kernel``: "numba" (``stack_kernels``; falls
    back to XLA for other dtypes than float32/float64 and inside an outer XLA program) or
    "xla" (the wavefront programs).
    """
    import tensorflow as tf

    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    train_fwd, backward, _ = _compiled()
    use_numba = kernel == "numba" and _numba_ok(x.dtype)
    batch = tf.shape(x)[0]
    seed = tf.zeros([2], tf.int32) if seed is None else tf.cast(seed, tf.int32)

    def cut(t: Any, axis: int) -> list[Any]:
        if parts == 1:
            return [t]
        size = (batch + parts - 1) // parts
        return tf.split(t, [size] * (parts - 1) + [batch - size * (parts - 1)], axis=axis)

    def fwd_slice(xs, hs, cs, kernel0, wst, bias, k):
        fn = _numba_forward if use_numba else train_fwd
        return fn(xs, hs, cs, kernel0, wst, bias, seed + [0, k], float(dropout))

    def bwd_slice(xs, kernel0, wst, o, ds, dh, dc):
        if use_numba:
            return _numba_backward(xs, kernel0, wst, o, ds, dh, dc)
        return backward(xs, kernel0, wst, o[5], o[3], o[4], ds, dh, dc)

    @tf.custom_gradient
    def run(x, h0, c0, kernel0, wst, bias):
        # Stop the outer tape from differentiating the slices' programs: ``grad`` does it.
        x, h0, c0, kernel0, wst, bias = (
            tf.stop_gradient(t) for t in (x, h0, c0, kernel0, wst, bias)
        )
        outs = [
            fwd_slice(xs, hs, cs, kernel0, wst, bias, k)
            for k, (xs, hs, cs) in enumerate(zip(cut(x, 0), cut(h0, 1), cut(c0, 1), strict=True))
        ]
        top = tf.concat([o[0] for o in outs], 0)
        h_last = tf.concat([o[1] for o in outs], 1)
        c_last = tf.concat([o[2] for o in outs], 1)

        def grad(d_seq, d_h_last, d_c_last):
            d_h_last = tf.zeros_like(h_last) if d_h_last is None else d_h_last
            d_c_last = tf.zeros_like(c_last) if d_c_last is None else d_c_last
            grads = [
                bwd_slice(xs, kernel0, wst, o, ds, dh, dc)
                for xs, o, ds, dh, dc in zip(
                    cut(x, 0), outs, cut(d_seq, 0), cut(d_h_last, 1), cut(d_c_last, 1), strict=True
                )
            ]
            dx = tf.concat([g[0] for g in grads], 0)
            dh0 = tf.concat([g[1] for g in grads], 1)
            dc0 = tf.concat([g[2] for g in grads], 1)
            weights = [tf.add_n([g[k] for g in grads]) for k in (3, 4, 5)]
            return (dx, dh0, dc0, *weights)

        return (top, h_last, c_last), grad

    return run(x, h0, c0, kernel0, wst, bias)


def wavefront_lstm_infer(
    x: Any, h0: Any, c0: Any, kernel0: Any, wst: Any, bias: Any, dropout: float = 0.0, seed=None
) -> Any:
    """Forward only, no saved activations: (top sequence, h_last, c_last).

    With ``dropout`` > 0 the masks are drawn from ``seed`` as in ``wavefront_lstm_stack``
    (Monte Carlo dropout).  Differentiable only through TensorFlow's own loop gradient.
    """
    import tensorflow as tf

    seed = tf.zeros([2], tf.int32) if seed is None else tf.cast(seed, tf.int32)
    return _compiled()[2](x, h0, c0, kernel0, wst, bias, seed, float(dropout))


def _tape_recording() -> bool:
    """Whether a gradient tape could record this call (True when unsure)."""
    try:
        from tensorflow.python.eager import record
    except ImportError:  # pragma: no cover - TensorFlow moved its internals
        return True
    return bool(record.could_possibly_record())


@keras.saving.register_keras_serializable(package="lstm_core")
class FastLSTMStack(keras.layers.Layer):
    """``layers`` x ``keras.layers.LSTM(units)``, each but the last followed by ``Dropout(dropout)``.

    Input (batch, time, features); output the top layer's last h (batch, units), or its whole
    sequence (batch, time, units) with ``return_sequences=True``.  ``kernel`` picks the
    training pass ("numba" or "xla", see the module docstring); ``batch_parts`` the slices.
    """

    def __init__(
        self,
        units: int,
        layers: int,
        dropout: float = 0.0,
        return_sequences: bool = False,
        seed: int | None = None,
        batch_parts: int = 2,
        kernel: str = "numba",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if layers < 1 or units < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"need layers >= 1, units >= 1, 0 <= dropout < 1; got "
                             f"{layers}, {units}, {dropout}")  # fmt: skip
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
        self.kernel = kernel
        self.units, self.n_layers, self.rate = units, layers, dropout
        self.return_sequences, self.seed = return_sequences, seed
        self.batch_parts = max(1, int(batch_parts))
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape: Any) -> None:
        n_in, u = input_shape[-1], self.units
        self.kernels, self.recurrents, self.biases = [], [], []
        for i in range(self.n_layers):
            # Keras LSTM's initializers: glorot_uniform, orthogonal, zeros with forget bias 1.
            self.kernels.append(
                self.add_weight(
                    shape=(n_in if i == 0 else u, 4 * u),
                    initializer="glorot_uniform",
                    name=f"kernel_{i}",
                )
            )
            self.recurrents.append(
                self.add_weight(shape=(u, 4 * u), initializer="orthogonal", name=f"recurrent_{i}")
            )
            self.biases.append(
                self.add_weight(shape=(4 * u,), initializer=_forget_bias_one(u), name=f"bias_{i}")
            )

    def layer_weights(self, i: int) -> list[Any]:
        """Layer i's [kernel, recurrent_kernel, bias] as NumPy, in keras.layers.LSTM's layout."""
        return [
            keras.ops.convert_to_numpy(w)
            for w in (self.kernels[i], self.recurrents[i], self.biases[i])
        ]

    def set_layer_weights(self, i: int, weights: list[Any]) -> None:
        for var, value in zip(
            (self.kernels[i], self.recurrents[i], self.biases[i]), weights, strict=True
        ):
            var.assign(value)

    def call(self, inputs: Any, training: bool = False) -> Any:
        import tensorflow as tf

        dtype = inputs.dtype
        u, n = self.units, self.n_layers
        batch = tf.shape(inputs)[0]
        wst = tf.stack(
            [
                tf.concat(
                    [
                        tf.zeros([u, 4 * u], dtype) if i == 0 else tf.cast(self.kernels[i], dtype),
                        tf.cast(self.recurrents[i], dtype),
                    ],
                    0,
                )  # fmt: skip
                for i in range(n)
            ]
        )
        bias = tf.stack([tf.cast(b, dtype) for b in self.biases])
        zeros = tf.zeros([n, batch, u], dtype)
        kernel0 = tf.cast(self.kernels[0], dtype)
        if training:
            # as keras' own random ops do: the generator's int64 state folded into int32
            seed = tf.cast(tf.math.floormod(self.seed_generator.next(), 2**31 - 1), tf.int32)
            if _tape_recording():
                seq, _, _ = wavefront_lstm_stack(
                    inputs, zeros, zeros, kernel0, wst, bias, self.rate, seed,
                    self.batch_parts, self.kernel,
                )  # fmt: skip
            else:  # Monte Carlo dropout: no gradient wanted, so nothing is saved for one
                seq, _, _ = wavefront_lstm_infer(
                    inputs, zeros, zeros, kernel0, wst, bias, self.rate, seed
                )
        else:
            seq, _, _ = wavefront_lstm_infer(inputs, zeros, zeros, kernel0, wst, bias)
        return seq if self.return_sequences else seq[:, -1]

    def compute_output_shape(self, input_shape: Any) -> tuple:
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units)
        return (input_shape[0], self.units)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "layers": self.n_layers,
            "dropout": self.rate,
            "return_sequences": self.return_sequences,
            "seed": self.seed,
            "batch_parts": self.batch_parts,
            "kernel": self.kernel,
        }


def _forget_bias_one(units: int) -> Any:
    def init(shape: Any, dtype: Any = None) -> Any:
        import numpy as np

        value = np.zeros(shape, dtype="float32")
        value[units : 2 * units] = 1.0  # unit_forget_bias=True
        return keras.ops.convert_to_tensor(value, dtype=dtype)

    return init
