"""The NumPy reference LSTM against Keras, tf.GradientTape and finite differences (float64)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tests.lstm_core import reference as ref

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

N_IN, UNITS, N_OUT, BATCH, STEPS = 3, 5, 2, 4, 7
PARAM_NAMES = [
    *("Wf", "Wi", "Wa", "Wo", "Uf", "Ui", "Ua", "Uo", "bf", "bi", "ba", "bo"),
    *("V", "c"),
]


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    # Norm-relative, so entries that are ~0 in both do not dominate.
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300))


def _keras_lstm(return_sequences: bool = True, return_state: bool = False):
    # dtype="float64" on the layer rather than keras.config.set_floatx, which is global.
    return keras.layers.LSTM(
        UNITS, return_sequences=return_sequences, return_state=return_state, dtype="float64"
    )


@pytest.fixture
def data() -> tuple[ref.LSTMParams, np.ndarray, np.ndarray]:
    params = ref.init_params(N_IN, UNITS, N_OUT, seed=1, scale=0.6)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(BATCH, STEPS, N_IN))
    y = rng.normal(size=(BATCH, N_OUT))
    return params, x, y


def test_mapping_round_trip(data) -> None:
    params, _, _ = data
    back = ref.from_keras_weights(*ref.to_keras_weights(params))
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(getattr(back, name), getattr(params, name))


def test_forward_matches_keras_sequences_and_state(data) -> None:
    params, x, _ = data
    layer = _keras_lstm(return_sequences=True, return_state=True)
    layer.build((None, STEPS, N_IN))
    layer.set_weights(ref.to_keras_weights(params)[:3])
    seq, h_last, c_last = (np.asarray(v) for v in layer(x))
    assert seq.dtype == np.float64

    cache = ref.forward(params, x)
    np.testing.assert_allclose(cache.h, seq, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cache.h_last, h_last, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cache.C_last, c_last, rtol=0, atol=1e-6)
    # float64 on both sides: in practice the agreement is at rounding level.
    assert np.max(np.abs(cache.h - seq)) < 1e-12


def test_forward_matches_keras_last_output_with_dense(data) -> None:
    params, x, _ = data
    lstm = _keras_lstm(return_sequences=False)
    dense = keras.layers.Dense(N_OUT, dtype="float64")
    model = keras.Sequential([keras.Input((STEPS, N_IN), dtype="float64"), lstm, dense])
    kw = ref.to_keras_weights(params)
    lstm.set_weights(kw[:3])
    dense.set_weights(kw[3:])
    y_keras = np.asarray(model(x))
    np.testing.assert_allclose(ref.forward(params, x).y_hat, y_keras, rtol=0, atol=1e-6)


def test_gradients_match_gradient_tape(data) -> None:
    params, x, y = data
    lstm = _keras_lstm(return_sequences=False)
    dense = keras.layers.Dense(N_OUT, dtype="float64")
    model = keras.Sequential([keras.Input((STEPS, N_IN), dtype="float64"), lstm, dense])
    kw = ref.to_keras_weights(params)
    lstm.set_weights(kw[:3])
    dense.set_weights(kw[3:])
    variables = [lstm.cell.kernel, lstm.cell.recurrent_kernel, lstm.cell.bias, *dense.weights]

    x_tf = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tf)
        # The functional form keeps float64 (the Loss object would cast to floatx=float32).
        loss = tf.reduce_mean(keras.losses.mean_squared_error(tf.constant(y), model(x_tf)))
    assert loss.dtype == tf.float64
    *tape_grads, tape_dx = tape.gradient(loss, [*variables, x_tf])

    cache = ref.forward(params, x)
    assert abs(ref.mse_loss(cache.y_hat, y) - float(loss)) < 1e-12
    grads = ref.backward(params, cache, target=y)
    # Map the tape's Keras-layout gradients back to the tutorial's names via the mapping.
    tape_named = ref.from_keras_weights(*(np.asarray(g) for g in tape_grads))
    for name in PARAM_NAMES:
        err = _rel_err(getattr(grads, name), getattr(tape_named, name))
        assert err < 1e-5, f"{name}: relative error {err:.2e}"
    assert _rel_err(grads.dx, np.asarray(tape_dx)) < 1e-5


def test_gradients_match_finite_differences(data) -> None:
    params, x, y = data
    grads = ref.backward(params, ref.forward(params, x), target=y)

    def loss_at() -> float:
        return ref.mse_loss(ref.forward(params, x).y_hat, y)

    eps = 1e-6
    for name in PARAM_NAMES:
        arr = getattr(params, name)
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            orig = arr[idx]
            arr[idx] = orig + eps
            up = loss_at()
            arr[idx] = orig - eps
            down = loss_at()
            arr[idx] = orig
            numeric[idx] = (up - down) / (2 * eps)
        err = _rel_err(getattr(grads, name), numeric)
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


def test_sequence_gradient_through_dh_seq(data) -> None:
    # Upstream gradient on every h(t) (a stacked layer above): check against the tape.
    params, x, _ = data
    rng = np.random.default_rng(3)
    dh = rng.normal(size=(BATCH, STEPS, UNITS))
    layer = _keras_lstm(return_sequences=True)
    layer.build((None, STEPS, N_IN))
    layer.set_weights(ref.to_keras_weights(params)[:3])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant(x)) * dh)
    tape_grads = tape.gradient(
        loss, [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
    )
    lstm_only = ref.from_keras_weights(*ref.to_keras_weights(params)[:3])
    grads = ref.backward(lstm_only, ref.forward(lstm_only, x), dh_seq=dh)
    tape_named = ref.from_keras_weights(*(np.asarray(g) for g in tape_grads))
    for name in PARAM_NAMES[:12]:
        assert _rel_err(getattr(grads, name), getattr(tape_named, name)) < 1e-5, name


def test_from_keras_layer_after_training() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 6, 2))
    y = x[:, -3:, 0].sum(axis=1, keepdims=True)
    keras.utils.set_random_seed(0)
    lstm = keras.layers.LSTM(4, dtype="float64")
    dense = keras.layers.Dense(1, dtype="float64")
    model = keras.Sequential([keras.Input((6, 2), dtype="float64"), lstm, dense])
    before = [w.copy() for w in lstm.get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert not np.allclose(before[1], lstm.get_weights()[1])  # really trained

    params = ref.from_keras_layer(lstm, dense)
    assert (params.units, params.n_in) == (4, 2)
    assert params.V.shape == (1, 4) and params.c.shape == (1,)
    np.testing.assert_allclose(ref.forward(params, x).y_hat, np.asarray(model(x)), atol=1e-6)
    # Gate slices land where the documented mapping says (Keras order i, f, c, o).
    k = lstm.get_weights()[0]
    np.testing.assert_array_equal(params.Uf, k[:, 4:8].T)
    np.testing.assert_array_equal(params.Ua, k[:, 8:12].T)
    np.testing.assert_array_equal(params.Wo, lstm.get_weights()[1][:, 12:16].T)


def test_from_keras_layer_random_weights_no_dense(data) -> None:
    params, x, _ = data
    layer = _keras_lstm()
    layer.build((None, STEPS, N_IN))
    layer.set_weights(ref.to_keras_weights(params)[:3])
    loaded = ref.from_keras_layer(layer)
    assert loaded.V is None and loaded.c is None
    np.testing.assert_allclose(ref.forward(loaded, x).h, np.asarray(layer(x)), atol=1e-6)


def test_from_keras_layer_rejects_other_activations() -> None:
    layer = keras.layers.LSTM(3, recurrent_activation="hard_sigmoid", dtype="float64")
    layer.build((None, 4, 2))
    with pytest.raises(ValueError, match="sigmoid"):
        ref.from_keras_layer(layer)
    ok = keras.layers.LSTM(3, dtype="float64")
    ok.build((None, 4, 2))
    relu_dense = keras.layers.Dense(1, activation="relu", dtype="float64")
    relu_dense.build((None, 3))
    with pytest.raises(ValueError, match="linear"):
        ref.from_keras_layer(ok, relu_dense)


def test_input_validation(data) -> None:
    params, x, y = data
    with pytest.raises(ValueError):
        ref.forward(params, x[..., :2])
    cache = ref.forward(params, x)
    with pytest.raises(ValueError):
        ref.backward(params, cache)
    with pytest.raises(ValueError):
        ref.backward(params, cache, np.zeros_like(y), target=y)


def test_sigmoid_is_stable() -> None:
    z = np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0])
    s = ref.sigmoid(z)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, [0.0, 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-1)), 1.0])
