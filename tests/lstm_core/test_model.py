import numpy as np
import pytest

from lstm_core.config import ModelConfig
from lstm_core.model import build_model, compile_options, predict_scaled


def _kind(layer) -> str:
    # the "fused" backend's FastLSTM is a keras.layers.LSTM subclass (same weights and maths)
    import keras

    return "LSTM" if isinstance(layer, keras.layers.LSTM) else type(layer).__name__


@pytest.mark.parametrize("backend", ["fused", "keras"])
def test_tutorial_architecture_layer_by_layer(backend):
    model = build_model(ModelConfig(backend=backend), lookback=60, n_features=1, horizon=1)
    kinds = [_kind(layer) for layer in model.layers]
    assert kinds == ["LSTM", "Dropout"] * 4 + ["Dense"]
    lstms = [layer for layer in model.layers if _kind(layer) == "LSTM"]
    assert [layer.return_sequences for layer in lstms] == [True, True, True, False]
    assert all(layer.units == 50 for layer in lstms)
    assert all(layer.rate == 0.2 for layer in model.layers if type(layer).__name__ == "Dropout")
    assert model.input_shape == (None, 60, 1) and model.output_shape == (None, 1)
    assert model.loss == "mean_squared_error"
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)
    assert model.count_params() == build_model(ModelConfig(), 60, 1, 1).count_params()


def test_tutorial_architecture_as_one_stack():
    model = build_model(ModelConfig(), lookback=60, n_features=1, horizon=1)
    assert [type(layer).__name__ for layer in model.layers] == [
        "FastLSTMStack", "Dropout", "Dense",
    ]  # fmt: skip
    stack, last_dropout, _ = model.layers
    assert (stack.n_layers, stack.units, stack.rate) == (4, 50, 0.2)
    assert not stack.return_sequences and last_dropout.rate == 0.2
    # the same weights as four keras LSTM(50) layers, layer by layer
    shapes = [[w.shape for w in stack.layer_weights(i)] for i in range(4)]
    assert shapes == [[(1, 200), (50, 200), (200,)]] + [[(50, 200), (50, 200), (200,)]] * 3
    assert model.input_shape == (None, 60, 1) and model.output_shape == (None, 1)
    assert model.loss == "mean_squared_error"


def test_compile_options():
    fast = build_model(ModelConfig(layers=2, units=4), 5, 3, 2)
    fused = build_model(ModelConfig(layers=2, units=4, backend="fused"), 5, 3, 2)
    plain = build_model(ModelConfig(layers=2, units=4, backend="keras"), 5, 3, 2)
    # "fast" compiles inside its layer: an outer jit would fuse its two batch halves into one
    assert (fast.jit_compile, fused.jit_compile, plain.jit_compile) == (False, True, False)
    assert type(fast.layers[0]).__name__ == "FastLSTMStack"
    assert all(
        type(layer).__name__ == "FastLSTM" for layer in fused.layers if _kind(layer) == "LSTM"
    )
    assert not any(layer.unroll for layer in plain.layers if _kind(layer) == "LSTM")
    assert all(type(layer).__name__ != "FastLSTM" for layer in plain.layers)
    assert fast.output_shape == fused.output_shape == (None, 2)
    with pytest.raises(ValueError):
        compile_options("torch")


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


@pytest.mark.parametrize(
    ("backend", "layer"),
    [("fast", "FastLSTMStack"), ("wavefront", "FastLSTMStack"), ("fused", "FastLSTM")],
)
def test_native_keras_format_round_trip_in_safe_mode(tmp_path, backend, layer):
    import keras

    steps = 9
    cfg = ModelConfig(layers=2, units=5, backend=backend)
    model = build_model(cfg, lookback=steps, n_features=1, horizon=1)
    assert type(model.layers[0]).__name__ == layer
    x = np.random.default_rng(3).random((6, steps, 1)).astype(np.float32)
    model.fit(x, x[:, -1, :], epochs=1, batch_size=3, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded.layers[0]).__name__ == layer
    assert getattr(loaded.layers[0], "kernel", None) == getattr(model.layers[0], "kernel", None)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    loaded.fit(x, x[:, -1, :], epochs=1, batch_size=3, verbose=0)  # compiled state restored
