"""Where a training step's time goes: the Numba kernels and whole train steps of both engines.

Usage:  .venv/bin/python benchmarks/bench_stack.py [--calls 40]

The tutorial's shape throughout: 4 layers x 50 units, 60 steps, 1 feature. Prints, in ms per call
(wall and process CPU):

* at batch 16 and 32: the Numba kernels of ``lstm_core.engine.kernels`` (training forward,
  backward, one whole ``train_slice``, ``forward`` with dropout off as inference runs it);
* one ``train_on_batch`` (batch 32, Dropout 0.2, Adam) of the plain Keras network (what
  ``model.backend: keras`` runs through ``fit``);
* one step of ``lstm_core.engine.fit`` (``model.backend: fast``), averaged over a 10-batch
  epoch without validation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
STEPS, UNITS, LAYERS = 60, 50, 4


def timed(name: str, fn: Any, *args: Any, calls: int) -> None:
    fn(*args)
    fn(*args)  # traced and compiled
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn(*args)
    wall = (time.perf_counter() - t0) / calls * 1000
    cpu = (time.process_time() - c0) / calls * 1000
    print(f"{name:<44} {wall:7.2f} ms wall {cpu:7.2f} ms CPU", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from lstm_core import engine
    from lstm_core.config import ModelConfig, TrainingConfig
    from lstm_core.engine.kernels import forward, stack_backward, stack_forward, train_slice
    from lstm_core.engine.process import engine_settings
    from lstm_core.model import build_model

    rng = np.random.default_rng(0)
    k0 = (rng.normal(size=(1, 4 * UNITS)) * 0.1).astype(np.float32)
    wst = (rng.normal(size=(LAYERS, 2 * UNITS, 4 * UNITS)) * 0.1).astype(np.float32)
    bias = np.zeros((LAYERS, 4 * UNITS), np.float32)
    dense_w, dense_b = np.zeros((UNITS, 1), np.float32), np.zeros(1, np.float32)
    params = (k0, wst, bias, dense_w, dense_b)
    key = np.uint64(7)
    with engine_settings():
        for batch in (16, 32):
            x = rng.random((batch, STEPS, 1)).astype(np.float32)
            y = rng.random((batch, 1)).astype(np.float32)
            masks = np.ones((STEPS + LAYERS - 1, LAYERS - 1, batch, UNITS), np.float32)
            saved = stack_forward(x, k0, wst, bias, masks)
            d_seq = rng.normal(size=(batch, STEPS, UNITS)).astype(np.float32)
            grads = np.zeros(sum(p.size for p in params), np.float32)
            timed(f"B={batch} Numba training forward", stack_forward, x, k0, wst, bias, masks,
                  calls=args.calls)  # fmt: skip
            timed(f"B={batch} Numba backward", stack_backward, x, wst, masks, saved, d_seq,
                  calls=args.calls)  # fmt: skip
            timed(f"B={batch} Numba train_slice (one core)", train_slice, x, y, params, key, 0,
                  batch, 0.2, 0.2, grads, calls=args.calls)  # fmt: skip
            timed(f"B={batch} Numba forward (inference)", forward, x, params, key, 0, batch,
                  0.0, 0.0, calls=args.calls)  # fmt: skip

    X = rng.random((32, STEPS, 1)).astype("float32")
    y = rng.random((32, 1)).astype("float32")
    model = build_model(ModelConfig(backend="keras"), STEPS, 1, 1, seed=0)
    timed("train_on_batch(32), plain keras", model.train_on_batch, X, y, calls=args.calls)

    model = build_model(ModelConfig(), STEPS, 1, 1, seed=0)
    X10, y10 = np.concatenate([X] * 10), np.concatenate([y] * 10)
    epochs = max(1, args.calls // 10)
    t0 = time.perf_counter()
    engine.fit(model, X10, y10, None, None, TrainingConfig(epochs=1, batch_size=32, seed=0))
    first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    engine.fit(model, X10, y10, None, None, TrainingConfig(epochs=epochs, batch_size=32, seed=0))
    wall = (time.perf_counter() - t0) / (10 * epochs) * 1000
    cpu = (time.process_time() - c0) / (10 * epochs) * 1000
    name = "engine.fit step (32), backend=fast"
    print(f"{name:<44} {wall:7.2f} ms wall {cpu:7.2f} ms CPU (first epoch {first:.1f} s)")


if __name__ == "__main__":
    main()
