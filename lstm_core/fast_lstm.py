"""FastLSTM: ``keras.layers.LSTM`` with a fused, XLA-friendly recurrence (TensorFlow backend).

Same weights, initializers, config and maths as ``keras.layers.LSTM`` (gate order i, f, c, o;
tanh / sigmoid), so ``lstm_core.reference.from_keras_layer`` applies unchanged.  What differs
is how the sequence is computed:

* the input projection ``x @ kernel + bias`` for all time steps is one big matmul, hoisted
  out of the recurrence;
* each step is then a single ``(batch, units) @ (units, 4·units)`` matmul for all four gates
  and one tanh over all four (σ(z) = ½·tanh(½z) + ½), inside a ``tf.while_loop`` (not a
  Python unroll), so XLA compiles it in seconds;
* the backward pass is hand-written back-propagation through time (the tutorial's δh / δC
  recursion, see ``reference.backward``) in a reverse ``tf.while_loop`` that carries only
  ``δz @ recurrent_kernelᵀ`` along the chain; the weight gradients are summed over all steps
  afterwards by three large matmuls instead of per-step outer products.

Anything the fused path does not cover (masks, dropout / recurrent dropout inside the layer,
``go_backwards``, other activations, no bias, non-TensorFlow backends) falls back to the
regular Keras implementation.  Registered for the native ``.keras`` format, so models using
it load with ``safe_mode=True`` once this module is imported (``Forecaster.load`` and
``lstm_core.model.build_model`` import it).
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["FastLSTM", "fused_lstm_sequence"]


def _act_name(fn: Any) -> str:
    return fn if isinstance(fn, str) else getattr(fn, "__name__", "")


def gate_affine(units: int, dtype: Any) -> tuple[Any, Any]:
    """(scale, shift) with σ(z) = ½·tanh(½z) + ½, so one tanh covers all four gates.

    Gates (i, f, c, o): i, f, o are sigmoids, c a tanh.  One wide tanh instead of three
    sigmoids and a tanh over slices: fewer, wider kernels per step.
    """
    import tensorflow as tf

    half = tf.fill([units], tf.constant(0.5, dtype))
    one, zero = tf.ones([units], dtype), tf.zeros([units], dtype)
    return tf.concat([half, half, one, half], 0), tf.concat([half, half, zero, half], 0)


def cell_forward(z: Any, c: Any, scale: Any, shift: Any, units: int) -> tuple[Any, Any, Any]:
    """Pre-activations ``z`` (..., 4u) and C(t-1) -> (gates i, f, a, o; C(t); h(t))."""
    import tensorflow as tf

    g = tf.tanh(z * scale) * scale + shift
    c_new = g[..., units : 2 * units] * c + g[..., :units] * g[..., 2 * units : 3 * units]
    return g, c_new, g[..., 3 * units :] * tf.tanh(c_new)


def cell_backward(
    dh: Any, dc_next: Any, g: Any, c: Any, c_prev: Any, units: int
) -> tuple[Any, Any]:
    """One step of the tutorial's BPTT: (δz over the four gates, δC(t)).

    ``dh`` is δh(t) in full, ``dc_next`` what C(t) receives from step t+1 (δC(t+1)·f(t+1)),
    ``g`` the gate activations, ``c`` C(t), ``c_prev`` C(t-1).
    """
    import tensorflow as tf

    i = g[..., :units]
    f = g[..., units : 2 * units]
    a = g[..., 2 * units : 3 * units]
    o = g[..., 3 * units :]
    tc = tf.tanh(c)
    dc = dc_next + dh * o * (1.0 - tc * tc)
    dz = tf.concat(
        [dc * a * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - a * a),
         dh * tc * o * (1.0 - o)],
        axis=-1,
    )  # fmt: skip
    return dz, dc


def fused_lstm_sequence(x: Any, h0: Any, c0: Any, kernel: Any, recurrent: Any, bias: Any):
    """Run one LSTM layer over ``x`` (batch, time, n_in); returns (h_seq, h_last, c_last).

    ``h_seq`` is (batch, time, units).  Differentiable in every argument through a custom
    gradient (BPTT); weights use Keras's packed (i, f, c, o) layout.
    """
    import tensorflow as tf

    units = recurrent.shape[0]
    n_in = x.shape[-1]

    scale, shift = gate_affine(units, x.dtype)

    @tf.custom_gradient
    def run(x, h0, c0, kernel, recurrent, bias):
        xt = tf.transpose(x, [1, 0, 2])  # time-major (T, B, n_in)
        steps = tf.shape(xt)[0]
        # One matmul for every step's input projection, off the sequential chain.
        xz = tf.reshape(
            tf.matmul(tf.reshape(xt, [-1, n_in]), kernel) + bias,
            tf.concat([tf.shape(xt)[:2], [4 * units]], 0),
        )

        def step(t, h, c, h_acc, gc_acc):
            g, c, h = cell_forward(xz[t] + tf.matmul(h, recurrent), c, scale, shift, units)
            return t + 1, h, c, h_acc.write(t, h), gc_acc.write(t, tf.concat([g, c], -1))

        def ta() -> Any:
            return tf.TensorArray(x.dtype, size=steps)

        _, h_last, c_last, h_acc, gc_acc = tf.while_loop(
            lambda t, *_: t < steps, step, (tf.constant(0), h0, c0, ta(), ta())
        )
        hs = h_acc.stack()  # (T, B, u)
        gcs = gc_acc.stack()  # (T, B, 5u): gates i, f, a, o and the cell state C(t)

        def grad(d_seq, d_h_last, d_c_last):
            # d_seq: (B, T, u) upstream gradient of the output sequence.
            dh_ext = tf.transpose(d_seq, [1, 0, 2])
            dh_init = tf.zeros_like(h0) if d_h_last is None else d_h_last
            dc_init = tf.zeros_like(c0) if d_c_last is None else d_c_last

            c_prev_all = tf.concat([c0[None], gcs[:-1, :, 4 * units :]], axis=0)

            def back_step(t, dh_rec, dc_next, dz_acc):
                gc = gcs[t]
                dh = dh_ext[t] + dh_rec  # δh(t): output term + what h(t) sent into t+1
                dz, dc = cell_backward(
                    dh, dc_next, gc[:, : 4 * units], gc[:, 4 * units :], c_prev_all[t], units
                )
                dh_rec = tf.matmul(dz, recurrent, transpose_b=True)
                return t - 1, dh_rec, dc * gc[:, units : 2 * units], dz_acc.write(t, dz)

            _, dh0, dc0, dz_acc = tf.while_loop(
                lambda t, *_: t >= 0, back_step, (steps - 1, dh_init, dc_init, ta())
            )
            dzs = dz_acc.stack()  # (T, B, 4u)
            dz_flat = tf.reshape(dzs, [-1, 4 * units])
            h_prev_all = tf.concat([h0[None], hs[:-1]], axis=0)
            # Weight gradients summed over batch and time by one matmul each.
            d_kernel = tf.matmul(tf.reshape(xt, [-1, n_in]), dz_flat, transpose_a=True)
            d_recurrent = tf.matmul(tf.reshape(h_prev_all, [-1, units]), dz_flat, transpose_a=True)
            d_bias = tf.reduce_sum(dz_flat, axis=0)
            dx = tf.transpose(tf.matmul(dzs, kernel, transpose_b=True), [1, 0, 2])
            return dx, dh0, dc0, d_kernel, d_recurrent, d_bias

        return (tf.transpose(hs, [1, 0, 2]), h_last, c_last), grad

    return run(x, h0, c0, kernel, recurrent, bias)


@keras.saving.register_keras_serializable(package="lstm_core")
class FastLSTM(keras.layers.LSTM):
    """Drop-in ``keras.layers.LSTM`` with a fused recurrence and hand-written BPTT.

    Accepts exactly the arguments of ``keras.layers.LSTM``.  Meant to be trained with
    ``jit_compile=True`` (XLA fuses each step's element-wise gate maths into one kernel).
    """

    def _fused_ok(self, mask: Any, training: bool) -> bool:
        cell = self.cell
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.go_backwards
            and not self.unroll
            and cell.use_bias
            and not (training and (cell.dropout or cell.recurrent_dropout))
            and _act_name(cell.activation) == "tanh"
            and _act_name(cell.recurrent_activation) == "sigmoid"
        )

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if not self._fused_ok(mask, training):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        import tensorflow as tf

        cell = self.cell
        dtype = sequences.dtype
        h0, c0 = (tf.cast(s, dtype) for s in initial_state)
        seq, h_last, c_last = fused_lstm_sequence(
            sequences,
            h0,
            c0,
            tf.cast(tf.convert_to_tensor(cell.kernel), dtype),
            tf.cast(tf.convert_to_tensor(cell.recurrent_kernel), dtype),
            tf.cast(tf.convert_to_tensor(cell.bias), dtype),
        )
        return h_last, seq, [h_last, c_last]
