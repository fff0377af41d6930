import numpy as np
import pytest

from lstm_core.config import ModelConfig
from lstm_core.model import backend_options, build_model, predict_scaled


def _kind(layer) -> str:
    # the "fast" backend's FastLSTM is a keras.layers.LSTM subclass (same weights and maths)
    import keras

    return "LSTM" if isinstance(layer, keras.layers.LSTM) else type(layer).__name__


def test_tutorial_architecture():
    model = build_model(ModelConfig(), lookback=60, n_features=1, horizon=1)
    kinds = [_kind(layer) for layer in model.layers]
    assert kinds == ["LSTM", "Dropout"] * 4 + ["Dense"]
    lstms = [layer for layer in model.layers if _kind(layer) == "LSTM"]
    assert [layer.return_sequences for layer in lstms] == [True, True, True, False]
    assert all(layer.units == 50 for layer in lstms)
    assert all(layer.rate == 0.2 for layer in model.layers if type(layer).__name__ == "Dropout")
    assert model.input_shape == (None, 60, 1) and model.output_shape == (None, 1)
    assert model.loss == "mean_squared_error"
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)


def test_backend_options():
    fast = build_model(ModelConfig(layers=2, units=4), 5, 3, 2)
    plain = build_model(ModelConfig(layers=2, units=4, backend="keras"), 5, 3, 2)
    assert fast.jit_compile is True and plain.jit_compile is False
    # whatever the tuned path sets on the LSTM layers is applied to every one of them
    _, fast_lstm = backend_options("fast")
    for layer in fast.layers:
        if _kind(layer) == "LSTM":
            assert type(layer).__name__ == "FastLSTM"
            assert all(getattr(layer, k) == v for k, v in fast_lstm.items())
    assert not any(layer.unroll for layer in plain.layers if _kind(layer) == "LSTM")
    assert all(type(layer).__name__ != "FastLSTM" for layer in plain.layers)
    assert fast.output_shape == (None, 2)
    with pytest.raises(ValueError):
        backend_options("torch")


def test_seeded_build_and_deterministic_prediction():
    cfg = ModelConfig(layers=1, units=4, backend="keras")
    a = build_model(cfg, 5, 1, 1, seed=3)
    b = build_model(cfg, 5, 1, 1, seed=3)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    X = np.random.default_rng(0).random((7, 5, 1)).astype(np.float32)
    p = predict_scaled(a, X, batch_size=3)
    assert p.shape == (7, 1)
    np.testing.assert_allclose(p, predict_scaled(a, X), rtol=1e-6)
    assert predict_scaled(a, X[:0]).shape == (0, 1)
