"""The Numba engine: its train step against Keras and finite differences, its loop against
keras' fit on the same plain network, and the process settings it restores."""

import numpy as np
import pytest

from lstm_core import engine
from lstm_core.config import ModelConfig, TrainingConfig
from lstm_core.engine import trainer
from lstm_core.engine.kernels import adam_update, dropout_masks, forward, train_slice
from lstm_core.engine.trainer import _Net
from lstm_core.model import build_model
from lstm_core.train import train_model

LOOKBACK, N_IN, HORIZON = 5, 2, 2


def _xy(n=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, LOOKBACK, N_IN)).astype(np.float32)  # (n, T, n_in)
    y = np.stack([X[:, -1, 0], X[:, -2, 1] * 0.5], axis=1)  # (n, H)
    return X, y.astype(np.float32)


def _model(dropout=0.2, layers=2, units=3, seed=0):
    cfg = ModelConfig(layers=layers, units=units, dropout=dropout)
    return build_model(cfg, LOOKBACK, N_IN, HORIZON, seed=seed)


def _params(model, dtype=np.float32):
    return [v.astype(dtype) for v in _Net.of(model).views]


def _slices_grad(model_params, X, y, rate, key=7, splits=()):
    """Sum of train_slice over the slices cut at ``splits``: (mean squared error, gradient)."""
    n = len(X)
    bounds = [0, *splits, n]
    size = sum(v.size for v in model_params)
    total, sse = np.zeros(size, X.dtype), 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        g = np.zeros(size, X.dtype)
        params = tuple(model_params)
        sse += train_slice(X[lo:hi], y[lo:hi], params, np.uint64(key), lo, n, rate, rate, g)
        total += g
    return sse / (n * y.shape[1]), total


def test_slices_without_dropout_give_the_keras_models_loss_and_gradients():
    import tensorflow as tf

    model = _model(dropout=0.0)
    X, y = _xy(n=9)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(X, training=True) - y))
    tape_grads = tape.gradient(loss, model.trainable_variables)
    # the same flat layout as the kernels', through the engine's own variable mapping
    expected = _Net.of(model)
    by_id = {id(v): g for v, g in zip(model.trainable_variables, tape_grads, strict=True)}
    assert len(expected.pairs) == len(by_id)  # every trainable variable is mapped
    for var, view in expected.pairs:
        view[...] = np.asarray(by_id[id(var)])
    mse, grads = _slices_grad(_params(model), X, y, 0.0, splits=(4,))
    assert mse == pytest.approx(float(loss), rel=1e-5)
    np.testing.assert_allclose(grads, expected.flat, rtol=1e-4, atol=1e-6)


def test_slice_gradients_with_dropout_match_finite_differences():
    model = _model(dropout=0.3, layers=3)
    params = _params(model, np.float64)
    X, y = (a.astype(np.float64) for a in _xy(n=6))
    _, grads = _slices_grad(params, X, y, 0.3, splits=(2,))
    rng = np.random.default_rng(3)
    flat_index = 0
    for arr in params:
        for i in rng.choice(arr.size, size=min(4, arr.size), replace=False):
            flat = arr.reshape(-1)
            old, h = flat[i], 1e-6
            flat[i] = old + h
            up, _ = _slices_grad(params, X, y, 0.3, splits=(2,))
            flat[i] = old - h
            down, _ = _slices_grad(params, X, y, 0.3, splits=(2,))
            flat[i] = old
            numeric = (up - down) / (2 * h)
            assert grads[flat_index + i] == pytest.approx(numeric, rel=1e-5, abs=1e-9)
        flat_index += arr.size


def test_dropout_changes_the_loss_and_is_the_same_however_the_batch_is_sliced():
    model = _model(dropout=0.3)
    X, y = _xy(n=10)
    whole = _slices_grad(_params(model), X, y, 0.3, key=11)
    sliced = _slices_grad(_params(model), X, y, 0.3, key=11, splits=(3,))
    assert whole[0] == pytest.approx(sliced[0], rel=1e-6)
    np.testing.assert_allclose(whole[1], sliced[1], rtol=1e-4, atol=1e-7)
    other_key = _slices_grad(_params(model), X, y, 0.3, key=12)
    no_dropout = _slices_grad(_params(model), X, y, 0.0, key=11)
    assert len({whole[0], other_key[0], no_dropout[0]}) == 3


def test_dropout_masks_keep_one_minus_rate_scaled_and_depend_only_on_key_and_counter():
    out = dropout_masks(np.empty((200, 500), np.float32), np.uint64(5), 0, 0.2)
    assert set(np.unique(out)) == {np.float32(0.0), np.float32(1.25)}
    assert (out > 0).mean() == pytest.approx(0.8, abs=0.005)
    assert out.mean() == pytest.approx(1.0, abs=0.01)
    top = dropout_masks(np.empty((50, 500), np.float32), np.uint64(5), 0, 0.2)
    rest = dropout_masks(np.empty((150, 500), np.float32), np.uint64(5), 50 * 500, 0.2)
    np.testing.assert_array_equal(np.concatenate([top, rest]), out)
    again = dropout_masks(np.empty((200, 500), np.float32), np.uint64(6), 0, 0.2)
    assert (again != out).mean() > 0.2
    # neighbouring keys and counters are not correlated
    assert abs(np.corrcoef(out.ravel(), again.ravel())[0, 1]) < 0.02


def test_adam_update_is_keras_adam():
    import keras

    rng = np.random.default_rng(0)
    start = rng.standard_normal(50).astype(np.float32)
    var = keras.Variable(start)
    opt = keras.optimizers.Adam(learning_rate=0.01)
    p, m, v = start.copy(), np.zeros(50, np.float32), np.zeros(50, np.float32)
    for step in range(1, 4):
        g = rng.standard_normal((2, 50)).astype(np.float32)
        opt.apply_gradients([(keras.ops.convert_to_tensor(g.sum(0)), var)])
        alpha = np.float32(0.01 * np.sqrt(1 - 0.999**step) / (1 - 0.9**step))
        adam_update(p, g, m, v, alpha, np.float32(0.1), np.float32(0.001), np.float32(1e-7))
    np.testing.assert_allclose(p, np.asarray(var), rtol=1e-5, atol=1e-7)


def _fit(model, X, y, epochs, backend="fast", shuffle=False, n_train=20, batch_size=8):
    """Train on the first ``n_train`` windows (by default in batches of 8 + 8 + 4), validate
    on the rest."""
    cfg = TrainingConfig(epochs=epochs, batch_size=batch_size, seed=3, shuffle=shuffle)
    return train_model(
        model, X[:n_train], y[:n_train], X[n_train:], y[n_train:], cfg, backend=backend
    )


@pytest.mark.parametrize(
    ("n_train", "batch_size", "steps"),
    [(20, 8, 3), (19, 6, 4)],  # 8 + 8 + 4; 6 + 6 + 6 + 1 (a one-window batch: one slice)
)
def test_the_engine_trains_like_keras_fit_on_the_same_network(n_train, batch_size, steps):
    X, y = _xy(n=27)
    kw = {"epochs": 3, "n_train": n_train, "batch_size": batch_size}
    numba_run = _fit(_model(dropout=0.0), X, y, **kw)
    keras_run = _fit(_model(dropout=0.0), X, y, backend="keras", **kw)
    for a, b in zip(numba_run.model.get_weights(), keras_run.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    for key in ("loss", "val_loss"):
        assert numba_run.history[key] == pytest.approx(keras_run.history[key], rel=1e-4)
    assert numba_run.history["loss"][-1] < numba_run.history["loss"][0]
    assert int(np.asarray(keras_run.model.optimizer.iterations)) == 3 * steps


def test_the_engine_runs_only_the_network_build_model_made():
    import keras

    model = _model()
    assert engine.eligible(model)
    assert not engine.eligible(keras.models.clone_model(model))  # the same layers, not ours
    other = keras.Sequential([keras.Input((LOOKBACK, N_IN)), keras.layers.GRU(3),
                              keras.layers.Dropout(0.1), keras.layers.Dense(HORIZON)])  # fmt: skip
    other.compile(optimizer="adam", loss="mse")
    assert not engine.eligible(other)
    X, y = _xy(n=24)
    with pytest.raises(ValueError, match="runs only build_model's float32 network"):
        train_model(other, X, y, None, None, TrainingConfig(epochs=1))
    model.compile(optimizer="sgd", loss="mean_squared_error")  # recompiled after build_model
    with pytest.raises(ValueError, match="trains with Adam, not SGD"):
        train_model(model, X, y, None, None, TrainingConfig(epochs=1))


def test_process_settings_are_taken_while_training_and_restored_after(monkeypatch):
    import gc

    from threadpoolctl import threadpool_info

    from lstm_core.engine import process

    calls = []
    monkeypatch.setattr(process, "mallopt", lambda p, v: calls.append((p, v)) or True)
    seen = {}

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    assert gc.isenabled()
    with process.engine_settings():
        seen = {"gc": gc.isenabled(), "blas": blas_threads()}
    assert seen["gc"] is False and set(seen["blas"]) == {1}
    assert gc.isenabled() and blas_threads() == before
    assert calls[:2] == list(process.TRAINING_VALUES.items())
    assert calls[2:] == list(process.GLIBC_DEFAULTS.items())

    X, y = _xy(n=24)
    _fit(_model(), X, y, epochs=1)  # the loop itself leaves them restored too
    assert gc.isenabled() and blas_threads() == before


def test_early_stopping_and_divergence_work_in_the_loop():
    from lstm_core.train import TrainingDivergedError

    X, y = _xy(n=40)
    y_val = np.random.default_rng(5).random((20, HORIZON)).astype(np.float32)  # unlearnable
    model = build_model(
        ModelConfig(layers=1, units=4, learning_rate=0.5), LOOKBACK, N_IN, HORIZON, seed=0
    )
    cfg = TrainingConfig(epochs=30, batch_size=8, early_stopping_patience=1)
    result = train_model(model, X[:20], y[:20], X[20:], y_val, cfg)
    assert result.stopped_early and result.epochs_run < 30
    restored = float(np.mean((model.predict(X[20:], verbose=0) - y_val) ** 2))
    assert restored == pytest.approx(min(result.history["val_loss"]), rel=1e-4)

    y_bad = y.copy()
    y_bad[3, 1] = np.nan
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 1"):
        train_model(_model(), X, y_bad, None, None, TrainingConfig(epochs=3, batch_size=8))


def test_predict_is_the_models_output_with_dropout_off():
    model = _model(dropout=0.3, layers=3)
    X, _ = _xy(n=11)
    plain = engine.predict(model, X)
    np.testing.assert_allclose(plain, np.asarray(model(X, training=False)), atol=1e-5)
    assert engine.predict(model, X[:0]).shape == (0, HORIZON)


def test_inference_in_chunks_gives_the_outputs_of_one_whole_batch(monkeypatch):
    """Inference cut in slices and chunks smaller than a slice changes no output."""
    model = _model(dropout=0.3, layers=3)
    X, _ = _xy(n=11)
    net = _Net.of(model)
    plain = forward(X, net.views, np.uint64(0), 0, 11, 0.0, 0.0)[-1]
    monkeypatch.setattr(trainer, "CHUNK", 4)
    np.testing.assert_allclose(engine.predict(model, X), plain, atol=1e-6)
