"""FastLSTM (fused recurrence + hand-written BPTT) against the NumPy reference and Keras."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from lstm_core import reference as ref

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from lstm_core.fast_lstm import FastLSTM  # noqa: E402

N_IN, UNITS, BATCH, STEPS = 3, 7, 4, 60
TOL = {"float32": (1e-5, 1e-4), "float64": (1e-6, 1e-9)}  # (forward abs, gradient rel)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300))


def _layer(dtype: str, return_sequences: bool = True, **kw) -> FastLSTM:
    layer = FastLSTM(UNITS, return_sequences=return_sequences, dtype=dtype, **kw)
    layer.build((None, STEPS, N_IN))
    # non-trivial bias (the default is zeros + unit forget bias)
    rng = np.random.default_rng(5)
    k, r, b = layer.get_weights()
    layer.set_weights([k, r, rng.uniform(-0.5, 0.5, b.shape).astype(dtype)])
    return layer


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("jit", [False, True])
def test_forward_and_gradients_match_reference(dtype, return_sequences, jit):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, STEPS, N_IN)).astype(dtype)
    dh = rng.normal(size=(BATCH, STEPS, UNITS)).astype(dtype)
    layer = _layer(dtype, return_sequences)
    params = ref.from_keras_layer(layer)
    weights = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]

    @tf.function(jit_compile=jit)
    def run(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = layer(xt)
            loss = tf.reduce_sum(out * (dh if return_sequences else dh[:, -1]))
        return out, tape.gradient(loss, [*weights, xt])

    out, grads = run(tf.constant(x))
    cache = ref.forward(params, x)
    expected = cache.h if return_sequences else cache.h[:, -1]
    fwd_tol, grad_tol = TOL[dtype]
    assert np.max(np.abs(np.asarray(out) - expected)) < fwd_tol

    dh_seq = dh if return_sequences else np.concatenate([0 * dh[:, :-1], dh[:, -1:]], axis=1)
    g = ref.backward(params, cache, dh_seq=dh_seq)
    for got, want in zip(grads, [*ref.to_keras_weights(g), g.dx], strict=True):
        assert _rel(got, want) < grad_tol


def test_same_as_keras_lstm_with_state_and_initial_state():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(BATCH, STEPS, N_IN)))
    h0 = tf.constant(rng.normal(size=(BATCH, UNITS)))
    c0 = tf.constant(rng.normal(size=(BATCH, UNITS)))
    fast = _layer("float64", return_sequences=True, return_state=True)
    plain = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True, dtype="float64")
    plain.build((None, STEPS, N_IN))
    plain.set_weights(fast.get_weights())

    def run(layer):
        with tf.GradientTape() as tape:
            tape.watch([x, h0, c0])
            seq, h, c = layer(x, initial_state=[h0, c0])
            loss = tf.reduce_sum(seq * seq) + tf.reduce_sum(h * 1.5) + tf.reduce_sum(c * c)
        return [seq, h, c], tape.gradient(loss, [x, h0, c0, *layer.trainable_weights])

    outs_f, grads_f = run(fast)
    outs_p, grads_p = run(plain)
    for a, b in zip(outs_f, outs_p, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    for a, b in zip(grads_f, grads_p, strict=True):
        assert _rel(a, b) < 1e-10


def test_unsupported_options_fall_back_to_keras():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(BATCH, STEPS, N_IN))
    for kw in ({"go_backwards": True}, {"recurrent_dropout": 0.5}):
        fast = _layer("float64", **kw)
        plain = keras.layers.LSTM(UNITS, return_sequences=True, dtype="float64", **kw)
        plain.build((None, STEPS, N_IN))
        plain.set_weights(fast.get_weights())
        np.testing.assert_allclose(fast(x), plain(x), atol=1e-12)
    masked = keras.Sequential(
        [keras.Input((STEPS, N_IN)), keras.layers.Masking(0.0), _layer("float64")]
    )
    x_masked = x.copy()
    x_masked[:, -5:] = 0.0
    out = np.asarray(masked(x_masked))
    np.testing.assert_allclose(out[:, -5:], out[:, -6:-5].repeat(5, axis=1), atol=1e-12)
