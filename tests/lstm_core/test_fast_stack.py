"""FastLSTMStack (both kernels: Numba and the XLA wavefront) against Keras and the reference."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from lstm_core import reference as ref

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from lstm_core.fast_stack import FastLSTMStack, _masks_program  # noqa: E402

# the masks both kernels use: an XLA program (threefry needs XLA on CPU)
_masks = _masks_program()

N_IN, UNITS, LAYERS, BATCH, STEPS = 2, 5, 3, 5, 9


def _rel(a, b) -> float:
    b = np.asarray(b)
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300))


def _pair(return_sequences: bool, parts: int = 1, dropout: float = 0.0, kernel: str = "numba"):
    """A float64 FastLSTMStack and LAYERS keras LSTMs holding the same random weights."""
    rng = np.random.default_rng(7)
    stack = FastLSTMStack(
        UNITS, LAYERS, dropout, return_sequences=return_sequences, batch_parts=parts,
        kernel=kernel, dtype="float64",
    )  # fmt: skip
    stack.build((None, STEPS, N_IN))
    plain = []
    for i in range(LAYERS):
        layer = keras.layers.LSTM(
            UNITS, return_sequences=return_sequences or i < LAYERS - 1, dtype="float64"
        )
        layer.build((None, STEPS, N_IN if i == 0 else UNITS))
        weights = [rng.uniform(-0.6, 0.6, w.shape) for w in layer.get_weights()]
        layer.set_weights(weights)
        stack.set_layer_weights(i, weights)
        plain.append(layer)
    return stack, plain


def _plain_weights(plain):
    return [w for layer in plain for w in (layer.cell.kernel, layer.cell.recurrent_kernel,
                                           layer.cell.bias)]  # fmt: skip


@pytest.mark.parametrize("kernel", ["numba", "xla"])
@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_forward_and_gradients_equal_stacked_keras_lstms(parts, return_sequences, kernel):
    stack, plain = _pair(return_sequences, parts, kernel=kernel)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, STEPS, N_IN)))
    shape = (BATCH, STEPS, UNITS) if return_sequences else (BATCH, UNITS)
    upstream = tf.constant(rng.normal(size=shape))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        fast = stack(x, training=True)
        h = x
        for layer in plain:
            h = layer(h)
        loss_fast = tf.reduce_sum(fast * upstream)
        loss_plain = tf.reduce_sum(h * upstream)
    assert np.max(np.abs(fast.numpy() - h.numpy())) < 1e-12
    got = tape.gradient(loss_fast, [x, *stack.trainable_weights])
    want = tape.gradient(loss_plain, [x, *_plain_weights(plain)])
    assert len(got) == len(want) == 1 + 3 * LAYERS
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < 1e-10
    # the inference path (no saved activations) gives the same numbers
    np.testing.assert_allclose(stack(x, training=False), fast, atol=1e-12)


def test_forward_equals_the_numpy_reference_layer_by_layer():
    stack, plain = _pair(return_sequences=True)
    x = np.random.default_rng(1).normal(size=(BATCH, STEPS, N_IN))
    h = x
    for layer in plain:
        h = ref.forward(ref.from_keras_layer(layer), h).h  # (B, T, u)
    np.testing.assert_allclose(stack(tf.constant(x)).numpy(), h, atol=1e-10)


def test_dropout_is_a_fresh_mask_per_layer_step_sample_and_unit():
    rate, seed = 0.3, tf.constant([3, 4])
    x = tf.zeros((64, STEPS, N_IN), tf.float64)
    masks = _masks(x, LAYERS, UNITS, seed, rate).numpy()
    assert masks.shape == (STEPS + LAYERS - 1, LAYERS - 1, 64, UNITS)
    assert set(np.unique(masks)) == {0.0, 1 / (1 - rate)}
    assert abs((masks == 0).mean() - rate) < 0.03
    # the same seed gives the same masks (the backward pass relies on it)
    np.testing.assert_array_equal(masks, _masks(x, LAYERS, UNITS, seed, rate).numpy())


@pytest.mark.parametrize("kernel", ["numba", "xla"])
def test_dropout_between_layers_matches_keras_layers_with_the_same_masks(kernel):
    from lstm_core.fast_stack import wavefront_lstm_stack

    rate = 0.4
    stack, plain = _pair(return_sequences=True, dropout=rate)
    x = tf.constant(np.random.default_rng(2).normal(size=(BATCH, STEPS, N_IN)))
    seed = tf.constant([11, 12])
    masks = _masks(x, LAYERS, UNITS, seed, rate).numpy()  # indexed by wave
    k, r, b = ([tf.convert_to_tensor(v) for v in vs]
               for vs in (stack.kernels, stack.recurrents, stack.biases))  # fmt: skip
    zero_k = tf.zeros((UNITS, 4 * UNITS), tf.float64)
    wst = tf.stack([tf.concat([zero_k if i == 0 else k[i], r[i]], 0) for i in range(LAYERS)])
    bias = tf.stack(b)
    zeros = tf.zeros((LAYERS, BATCH, UNITS), tf.float64)
    kernel0 = k[0]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(kernel0)
        fast, _, _ = wavefront_lstm_stack(
            x, zeros, zeros, kernel0, wst, bias, rate, seed, kernel=kernel
        )
        h = x
        for i, layer in enumerate(plain):
            h = layer(h)
            if i < LAYERS - 1:
                # layer i's output at step t entered layer i+1 in wave t + i + 1
                h = h * np.stack([masks[t + i + 1, i] for t in range(STEPS)], axis=1)
        loss_fast, loss_plain = tf.reduce_sum(fast**2), tf.reduce_sum(h**2)
    np.testing.assert_allclose(fast.numpy(), h.numpy(), atol=1e-12)
    assert 0 < (masks == 0).mean() < 1
    g_fast = tape.gradient(loss_fast, kernel0)
    g_plain = tape.gradient(loss_plain, plain[0].cell.kernel)
    assert _rel(g_fast, g_plain) < 1e-10


@pytest.mark.parametrize(("parts", "kernel"), [(1, "numba"), (2, "numba"), (2, "xla")])
def test_gradient_with_dropout_matches_finite_differences(parts, kernel):
    """Same seed, same masks: the loss is a smooth function of the weights."""
    from lstm_core.fast_stack import wavefront_lstm_stack

    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(BATCH, STEPS, N_IN)))
    kernel0 = tf.constant(rng.uniform(-0.5, 0.5, (N_IN, 4 * UNITS)))
    wst = tf.constant(rng.uniform(-0.5, 0.5, (LAYERS, 2 * UNITS, 4 * UNITS)))
    bias = tf.constant(rng.uniform(-0.5, 0.5, (LAYERS, 4 * UNITS)))
    zeros = tf.zeros((LAYERS, BATCH, UNITS), tf.float64)
    seed = tf.constant([5, 6])

    def loss(k0, w, b):
        seq, h_last, c_last = wavefront_lstm_stack(
            x, zeros, zeros, k0, w, b, 0.3, seed, parts, kernel
        )
        return tf.reduce_sum(tf.sin(seq)) + tf.reduce_sum(h_last * c_last)

    params = [kernel0, wst, bias]
    with tf.GradientTape() as tape:
        tape.watch(params)
        value = loss(*params)
    grads = tape.gradient(value, params)
    eps = 1e-6
    for k, (p, g) in enumerate(zip(params, grads, strict=True)):
        direction = rng.normal(size=p.shape)
        shifted = [list(params), list(params)]
        shifted[0][k] = p + eps * direction
        shifted[1][k] = p - eps * direction
        numeric = (loss(*shifted[0]) - loss(*shifted[1])).numpy() / (2 * eps)
        analytic = float(np.sum(g.numpy() * direction))
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric))


def test_monte_carlo_dropout_outside_a_tape_draws_new_masks():
    stack, _ = _pair(return_sequences=False, dropout=0.3)
    x = tf.constant(np.random.default_rng(3).normal(size=(BATCH, STEPS, N_IN)))
    a, b = stack(x, training=True), stack(x, training=True)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(stack(x), stack(x))  # inference is deterministic


def test_trains_under_an_outer_jit_too():
    """jit_compile=True on the model inlines the halves into one program: slower, same maths."""
    stack, _ = _pair(return_sequences=False, parts=2)
    model = keras.Sequential([keras.Input((STEPS, N_IN), dtype="float64"), stack,
                              keras.layers.Dense(1, dtype="float64")])  # fmt: skip
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    x = np.random.default_rng(5).normal(size=(8, STEPS, N_IN))
    before = model.evaluate(x, x[:, -1, :1], verbose=0)
    model.fit(x, x[:, -1, :1], epochs=3, batch_size=8, verbose=0)
    assert model.evaluate(x, x[:, -1, :1], verbose=0) < before


def test_the_two_kernels_agree_in_float32_with_dropout():
    """The default float32 path (rational tanh in the Numba kernel) against the XLA wavefront."""
    from lstm_core.fast_stack import wavefront_lstm_stack

    rng = np.random.default_rng(8)
    layers, units, batch, steps = 3, 8, 6, 12
    x = tf.constant(rng.normal(size=(batch, steps, 1)), tf.float32)
    kernel0 = tf.constant(rng.uniform(-0.5, 0.5, (1, 4 * units)), tf.float32)
    wst = tf.constant(rng.uniform(-0.5, 0.5, (layers, 2 * units, 4 * units)), tf.float32)
    bias = tf.constant(rng.uniform(-0.5, 0.5, (layers, 4 * units)), tf.float32)
    zeros = tf.zeros((layers, batch, units), tf.float32)
    seed = tf.constant([1, 2])
    results = {}
    for kernel in ("numba", "xla"):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel0, wst, bias])
            seq, h_last, c_last = wavefront_lstm_stack(
                x, zeros, zeros, kernel0, wst, bias, 0.25, seed, 2, kernel
            )
            loss = tf.reduce_sum(tf.sin(seq)) + tf.reduce_sum(h_last * c_last)
        results[kernel] = [seq, *tape.gradient(loss, [x, kernel0, wst, bias])]
    for got, want in zip(results["numba"], results["xla"], strict=True):
        assert _rel(got, want) < 1e-5


def test_the_fast_backend_trains_with_the_numba_kernels(monkeypatch):
    """A silent fallback to XLA would pass every maths test: count the kernel calls."""
    from lstm_core import fast_stack
    from lstm_core.config import ModelConfig
    from lstm_core.model import build_model

    calls = {"forward": 0, "backward": 0}
    real = {"forward": fast_stack._call_forward, "backward": fast_stack._call_backward}

    def counting(name):
        def call(*arrays):
            calls[name] += 1
            return real[name](*arrays)

        return call

    monkeypatch.setattr(fast_stack, "_call_forward", counting("forward"))
    monkeypatch.setattr(fast_stack, "_call_backward", counting("backward"))
    model = build_model(ModelConfig(layers=2, units=4, backend="fast"), 6, 1, 1, seed=0)
    x = np.random.default_rng(0).normal(size=(8, 6, 1)).astype("float32")
    model.fit(x, x[:, -1], epochs=1, batch_size=4, verbose=0)
    # two batches, each cut in two halves
    assert calls == {"forward": 4, "backward": 4}


def test_unknown_kernel_is_rejected():
    with pytest.raises(ValueError, match="unknown kernel"):
        FastLSTMStack(4, 2, kernel="cuda")
