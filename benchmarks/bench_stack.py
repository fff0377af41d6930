"""Where a training step's time goes: the LSTM stack's kernels and whole train steps.

Usage:  .venv/bin/python benchmarks/bench_stack.py [--calls 40]

The tutorial's shape throughout: 4 layers x 50 units, 60 steps, 1 feature. Prints, in ms per call
(wall and process CPU):

* at batch 16 and 32: the Numba kernels of ``lstm_core.stack_kernels`` (training forward,
  backward) and the XLA programs of ``lstm_core.fast_stack`` (training forward with its
  dropout masks, backward, inference forward);
* forward + backward of the whole stack, per kernel, with the batch cut in 1 and 2 parts
  (2 = each half on its own core);
* one ``train_on_batch`` (batch 32, Dropout 0.2, Adam) for each ``model.backend``: "fast"
  (FastLSTMStack, Numba), "wavefront" (FastLSTMStack, XLA), "fused" (FastLSTM per layer under
  XLA), "keras" (plain, as the tutorial);
* one step of ``lstm_core.stack_trainer.fit_stack`` (the "fast" network's Numba training loop,
  what ``train_model`` uses for it), averaged over a 10-batch epoch without validation.
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
    from lstm_core.config import ModelConfig, TrainingConfig
    from lstm_core.fast_stack import _compiled, wavefront_lstm_stack
    from lstm_core.model import BACKENDS, build_model
    from lstm_core.stack_kernels import stack_backward, stack_forward, tune_process

    print(f"process tuning for the Numba kernels: {tune_process()}")

    rng = np.random.default_rng(0)
    k0 = tf.constant(rng.normal(size=(1, 4 * UNITS)) * 0.1, tf.float32)
    wst = tf.constant(rng.normal(size=(LAYERS, 2 * UNITS, 4 * UNITS)) * 0.1, tf.float32)
    bias = tf.zeros((LAYERS, 4 * UNITS))
    seed = tf.constant([1, 2])
    train_fwd, backward, infer = _compiled()
    for batch in (16, 32):
        x = tf.constant(rng.random((batch, STEPS, 1)), tf.float32)
        zeros = tf.zeros((LAYERS, batch, UNITS))
        out = train_fwd(x, zeros, zeros, k0, wst, bias, seed, 0.2)
        d_seq = tf.constant(rng.normal(size=(batch, STEPS, UNITS)), tf.float32)
        timed(f"B={batch} training forward", train_fwd, x, zeros, zeros, k0, wst, bias, seed,
              0.2, calls=args.calls)  # fmt: skip
        timed(f"B={batch} backward", backward, x, k0, wst, out[5], out[3], out[4], d_seq, zeros,
              zeros, calls=args.calls)  # fmt: skip
        timed(f"B={batch} inference forward", infer, x, zeros, zeros, k0, wst, bias, seed, 0.0,
              calls=args.calls)  # fmt: skip
        arrays = [np.asarray(a) for a in (x, k0, wst, bias, out[5], zeros, zeros)]
        saved = stack_forward(*arrays)
        timed(f"B={batch} Numba training forward", stack_forward, *arrays, calls=args.calls)
        timed(f"B={batch} Numba backward", stack_backward, *arrays[:3], arrays[4], *saved[3:],
              np.asarray(d_seq), arrays[5], arrays[6], calls=args.calls)  # fmt: skip
        for kernel in ("numba", "xla"):
            for parts in (1, 2):

                @tf.function
                def fwd_bwd(x: Any, zeros: Any = zeros, parts: int = parts, kernel=kernel) -> Any:
                    with tf.GradientTape() as tape:
                        tape.watch([k0, wst, bias])
                        seq = wavefront_lstm_stack(
                            x, zeros, zeros, k0, wst, bias, 0.2, seed, parts, kernel
                        )
                        loss = tf.reduce_sum(seq[0][:, -1])
                    return tape.gradient(loss, [k0, wst, bias])

                timed(f"B={batch} {kernel} forward+backward, {parts} part(s)", fwd_bwd, x,
                      calls=args.calls)  # fmt: skip

    X = rng.random((32, STEPS, 1)).astype("float32")
    y = rng.random((32, 1)).astype("float32")
    for backend in BACKENDS:
        model = build_model(ModelConfig(backend=backend), STEPS, 1, 1, seed=0)
        timed(f"train_on_batch(32), backend={backend}", model.train_on_batch, X, y,
              calls=args.calls)  # fmt: skip

    from lstm_core.stack_trainer import fit_stack

    model = build_model(ModelConfig(), STEPS, 1, 1, seed=0)
    X10, y10 = np.concatenate([X] * 10), np.concatenate([y] * 10)
    epochs = max(1, args.calls // 10)
    t0, c0 = time.perf_counter(), time.process_time()
    fit_stack(model, X10, y10, None, None, TrainingConfig(epochs=1, batch_size=32, seed=0))
    first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    fit_stack(model, X10, y10, None, None, TrainingConfig(epochs=epochs, batch_size=32, seed=0))
    wall = (time.perf_counter() - t0) / (10 * epochs) * 1000
    cpu = (time.process_time() - c0) / (10 * epochs) * 1000
    name = "fit_stack step (32), backend=fast"
    print(f"{name:<44} {wall:7.2f} ms wall {cpu:7.2f} ms CPU (first epoch {first:.1f} s)")


if __name__ == "__main__":
    main()
