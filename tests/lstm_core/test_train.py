import numpy as np
import pytest

from lstm_core.config import ModelConfig, TrainingConfig
from lstm_core.model import build_model
from lstm_core.train import TrainingDivergedError, train_model

CFG = ModelConfig(layers=1, units=4, backend="keras")
BACKENDS = pytest.mark.parametrize("backend", ["fast", "keras"])


def _xy(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 5, 1)).astype(np.float32)  # (n_windows, lookback, n_features)
    return X, X[:, -1, :] * 0.5 + 0.1  # (n_windows, horizon)


def _train(cfg: TrainingConfig, callbacks=(), backend="keras"):
    X, y = _xy()
    model = build_model(CFG, 5, 1, 1, seed=cfg.seed)
    return train_model(model, X[:48], y[:48], X[48:], y[48:], cfg, callbacks, backend=backend)


@BACKENDS
def test_same_seed_same_weights_and_history(backend):
    cfg = TrainingConfig(epochs=2, batch_size=8, seed=7)
    a, b = _train(cfg, backend=backend), _train(cfg, backend=backend)
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert a.history == b.history
    assert set(a.history) >= {"loss", "val_loss"} and len(a.history["loss"]) == 2
    assert a.epochs_run == 2 and not a.stopped_early


@BACKENDS
def test_callbacks_receive_epoch_losses(backend):
    import keras

    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, float(logs["loss"]), float(logs["val_loss"])))

    result = _train(TrainingConfig(epochs=2, batch_size=16), callbacks=[Spy()], backend=backend)
    assert [s[0] for s in seen] == [0, 1]
    assert [s[1] for s in seen] == pytest.approx(result.history["loss"])


@BACKENDS
def test_early_stopping_restores_best_weights(backend):
    X, y = _xy()
    model = build_model(
        ModelConfig(layers=1, units=4, backend="keras", learning_rate=0.5), 5, 1, 1, seed=0
    )
    # validation targets unrelated to the inputs: val_loss cannot keep improving
    y_val = np.random.default_rng(5).random((16, 1)).astype(np.float32)
    result = train_model(
        model,
        X[:48],
        y[:48],
        X[48:],
        y_val,
        TrainingConfig(epochs=30, batch_size=8, early_stopping_patience=1),
        backend=backend,
    )
    assert result.stopped_early and result.epochs_run < 30
    best = min(result.history["val_loss"])
    restored = float(result.model.evaluate(X[48:], y_val, verbose=0))
    assert restored == pytest.approx(best, rel=1e-4)


@BACKENDS
def test_nan_loss_raises(backend):
    X, y = _xy()
    y = y.copy()
    y[3] = np.nan
    model = build_model(CFG, 5, 1, 1, seed=0)
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 1"):
        train_model(model, X, y, None, None, TrainingConfig(epochs=3), backend=backend)


def test_no_validation_and_no_zero_epochs():
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        TrainingConfig(epochs=0)
    X, y = _xy()
    model = build_model(CFG, 5, 1, 1, seed=0)
    result = train_model(
        model, X, y, None, None, TrainingConfig(epochs=1, early_stopping_patience=2)
    )
    assert result.history["val_loss"] == [] and result.epochs_run == 1


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_epoch_sees_every_window_once_in_ceil_n_over_batch_steps(shuffle):
    """One repeated dataset serves all epochs: each epoch is still exactly one pass."""
    import keras

    X = np.arange(21 * 5, dtype=np.float32).reshape(21, 5, 1)  # 21 windows, batch 8: 8+8+5
    y = X[:, -1, :]
    seen: list[list[float]] = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append([])

        def on_train_batch_end(self, batch, logs=None):
            seen[-1].append(batch)

    model = build_model(CFG, 5, 1, 1, seed=0)
    cfg = TrainingConfig(epochs=3, batch_size=8, shuffle=shuffle, seed=1)
    result = train_model(model, X, y, None, None, cfg, callbacks=[Spy()], backend="keras")
    assert [len(batches) for batches in seen] == [3, 3, 3]
    assert result.epochs_run == 3

    from lstm_core.train import _dataset

    ds = _dataset(X, y, 8, shuffle, seed=1, repeat=True)
    firsts = [float(xb[i, 0, 0]) for xb, _ in ds.take(9) for i in range(len(xb))]
    for epoch in range(3):  # batches 3k..3k+2 are epoch k: all 21 windows, none twice
        assert sorted(firsts[21 * epoch : 21 * (epoch + 1)]) == [5.0 * i for i in range(21)]
    if shuffle:
        assert firsts[:21] != firsts[21:42]  # reshuffled each epoch


def test_fast_backend_trains_through_train_model():
    X, y = _xy()
    model = build_model(ModelConfig(layers=2, units=4), 5, 1, 1, seed=0)
    before = float(model.evaluate(X, y, verbose=0))
    result = train_model(model, X, y, X, y, TrainingConfig(epochs=3, batch_size=8, seed=0))
    assert result.epochs_run == 3 and result.history["loss"][-1] < before


def test_unknown_backend_is_an_error():
    X, y = _xy()
    model = build_model(CFG, 5, 1, 1, seed=0)
    with pytest.raises(ValueError, match="unknown backend"):
        train_model(model, X, y, None, None, TrainingConfig(epochs=1), backend="fused")


@pytest.mark.parametrize("repeat", [False, True])
def test_datasets_are_not_autotuned(repeat):
    # An autotuned iterator's destructor waited seconds, idle, in busy Dask workers.
    from lstm_core.train import _dataset

    X = np.zeros((5, 3, 1), np.float32)
    ds = _dataset(X, X[:, 0], batch_size=2, shuffle=True, seed=0, repeat=repeat)
    assert ds.options().autotune.enabled is False
    assert sum(1 for _ in ds.take(3)) == 3
