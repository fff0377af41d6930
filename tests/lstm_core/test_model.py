import numpy as np
import pytest

from lstm_core.config import ModelConfig
from lstm_core.model import build_model, predict_scaled


def _kind(layer) -> str:
    return type(layer).__name__


@pytest.mark.parametrize("backend", ["fast", "keras"])
def test_tutorial_architecture_of_plain_keras_layers_whatever_the_backend(backend):
    import keras

    model = build_model(ModelConfig(backend=backend), lookback=60, n_features=1)
    assert type(model) is keras.Sequential
    kinds = [_kind(layer) for layer in model.layers]
    assert kinds == ["LSTM", "Dropout"] * 4 + ["Dense"]
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
    lstms = [layer for layer in model.layers if _kind(layer) == "LSTM"]
    assert [layer.return_sequences for layer in lstms] == [True, True, True, False]
    assert all(layer.units == 50 for layer in lstms)
    assert all(layer.rate == 0.2 for layer in model.layers if _kind(layer) == "Dropout")
    assert model.input_shape == (None, 60, 1) and model.output_shape == (None, 1)
    assert model.loss == "mean_squared_error" and not model.jit_compile
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError):
        ModelConfig(backend="fused")


def test_seeded_build_and_deterministic_prediction(tmp_path):
    cfg = ModelConfig(layers=1, units=4, backend="keras")
    a = build_model(cfg, 5, 1, 1, seed=3)
    b = build_model(cfg, 5, 1, 1, seed=3)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    X = np.random.default_rng(0).random((7, 5, 1)).astype(np.float32)
    p = predict_scaled(a, X)  # the engine runs a network build_model made
    assert p.shape == (7, 1)
    # Loaded as Forecaster.load loads it, it runs in Keras: no kernels to compile when serving.
    import keras

    from lstm_core import engine

    a.save(tmp_path / "m.keras")
    served = keras.models.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    assert not engine.eligible(served)
    np.testing.assert_allclose(predict_scaled(served, X), p, rtol=1e-5, atol=1e-6)
    assert predict_scaled(a, X[:0]).shape == (0, 1)
    assert predict_scaled(served, X[:0]).shape == (0, 1)


# Loads the saved file in a fresh interpreter where the project cannot be imported (the venv's
# editable install would find it, so its packages are blocked): no custom objects, no project
# import, Keras' safe mode.
_LOAD_PLAIN = """
import sys
for name in ("lstm_core", "pipelines", "tests"):
    sys.modules[name] = None  # any import of them raises ImportError
import numpy as np, keras
model = keras.saving.load_model({path!r}, safe_mode=True)
x = np.load({x!r})
np.save({out!r}, np.asarray(model(x, training=False)))
print(sorted({{type(layer).__module__.split('.')[0] for layer in model.layers}}))
"""


def test_a_model_trained_by_the_engine_saves_as_plain_keras_loadable_without_the_project(
    tmp_path,
):
    import os
    import subprocess
    import sys

    from lstm_core.config import TrainingConfig
    from lstm_core.train import train_model

    steps = 9
    model = build_model(ModelConfig(layers=2, units=5), lookback=steps, n_features=1)
    x = np.random.default_rng(3).random((12, steps, 1)).astype(np.float32)
    train_model(model, x, x[:, -1, :], None, None, TrainingConfig(epochs=2, batch_size=4))
    path, xfile, out = tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "out.npy"
    model.save(path)
    np.save(xfile, x)
    code = _LOAD_PLAIN.format(path=str(path), x=str(xfile), out=str(out))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['keras']"
    np.testing.assert_allclose(np.load(out), np.asarray(model(x, training=False)), atol=1e-6)


def test_networks_built_in_threads_get_the_weights_of_a_build_alone():
    """Tickers train in threads of one process: Keras' global RNGs must not mix their builds."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    cfg = ModelConfig(layers=2, units=8)
    alone = {seed: build_model(cfg, 10, 1, 1, seed=seed).get_weights() for seed in (7, 8)}
    barrier = threading.Barrier(4)

    def build(seed: int) -> list:
        barrier.wait()  # all four builds start together
        return build_model(cfg, 10, 1, 1, seed=seed).get_weights()

    seeds = [7, 8, 7, 8]
    with ThreadPoolExecutor(len(seeds)) as pool:
        built = list(pool.map(build, seeds))
    for seed, weights in zip(seeds, built, strict=True):
        for want, got in zip(alone[seed], weights, strict=True):
            np.testing.assert_array_equal(got, want)


def test_another_thread_drawing_from_pythons_random_leaves_the_weights_alone():
    """Prefect's and servers' threads draw from Python's global `random` at any time."""
    import random
    import threading

    cfg = ModelConfig(layers=2, units=4)
    alone = build_model(cfg, 5, 1, 1, seed=3).get_weights()
    stop = threading.Event()

    def draw() -> None:
        while not stop.is_set():
            random.random()

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        beside = [build_model(cfg, 5, 1, 1, seed=3).get_weights() for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    for weights in beside:
        for want, got in zip(alone, weights, strict=True):
            np.testing.assert_array_equal(got, want)
