"""Training-speed levers for the tutorial's network (4×LSTM(50)+Dropout(0.2), Dense(1), Adam, MSE).

Usage:  .venv/bin/python benchmarks/bench_levers.py [--only a,c,...] [--epochs 3]

Each lever runs in its own subprocess (TF thread settings only take effect before the runtime
starts, and compiled graphs must not leak between levers). Per lever: build, one warm-up epoch
(includes tracing / XLA compile), then ``--epochs`` timed epochs of ``fit`` at batch 32;
samples/s = windows × epochs / wall time. "cores" is process CPU time / wall time during the
timed epochs (1.0 = one core busy). val_mse is evaluated after all epochs on held-out windows.

Data: opening prices from /work/shared/data/平安银行.csv (GB18030, 开盘价(元)), first 2035 rows,
MinMax-scaled, 60-day windows exactly as the tutorial (1975 training windows); validation =
the next 300 windows scaled with the same scaler. Falls back to a random walk when absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CSV = Path("/work/shared/data/平安银行.csv")
LOOKBACK, TRAIN_ROWS, VAL_WINDOWS = 60, 2035, 300
UNITS, LAYERS, DROPOUT, BATCH = 50, 4, 0.2, 32

# name -> settings. impl: keras | fused (autodiff through an unrolled TF loop) | fused_cg
# (same forward, hand-written BPTT as in reference.backward, weight grads as 3 big matmuls).
LEVERS: dict[str, dict[str, Any]] = {
    "a_baseline": {},
    "b_tfdata_prefetch": {"data": "tfdata"},
    "c_jit": {"jit": True},
    "d_unroll": {"unroll": True},
    "e_threads_1/2": {"threads": (1, 2)},
    "e_threads_2/1": {"threads": (2, 1)},
    "f_fused_cg": {"impl": "fused_cg"},
    "g_jit+tfdata+spe16": {"jit": True, "data": "tfdata", "spe": 16},
    "g_jit+unroll": {"jit": True, "unroll": True},
    "g_fused_cg+split2+inter2": {"impl": "fused_cg", "split": 2, "threads": (1, 2)},
}
# Measured once and left out of the default run: XLA compile of the Python-unrolled fused
# graph (4 layers x 60 steps, fwd + hand-written bwd, split in two) was still running after
# 10 minutes at 5.6 GB RSS, so it cannot pay off for a 20-epoch training.
SLOW_LEVERS: dict[str, dict[str, Any]] = {
    "f_fused": {"impl": "fused"},
    "g_jit+fused_cg+spe+split2": {"jit": True, "impl": "fused_cg", "spe": 16, "split": 2},
}
LEVERS_ALL = {**LEVERS, **SLOW_LEVERS}
TIMEOUT_S = 150


# --- data ----------------------------------------------------------------------------------


def load_data() -> tuple[Any, Any, Any, Any, str]:
    import numpy as np
    from sklearn.preprocessing import MinMaxScaler

    if CSV.exists():
        import pandas as pd

        prices = pd.read_csv(CSV, encoding="gb18030")["开盘价(元)"].to_numpy(np.float64)
        source = f"{CSV.name} 开盘价(元)"
    else:
        rng = np.random.default_rng(0)
        prices = 20.0 + np.cumsum(rng.normal(0, 0.3, TRAIN_ROWS + VAL_WINDOWS + 1))
        source = "random walk"
    # Scaler fitted on the tutorial's training rows only, as in the tutorial.
    sc = MinMaxScaler(feature_range=(0, 1))
    train = sc.fit_transform(prices[:TRAIN_ROWS].reshape(-1, 1))[:, 0]
    X = np.array([train[i - LOOKBACK : i] for i in range(LOOKBACK, TRAIN_ROWS)])
    y = train[LOOKBACK:TRAIN_ROWS]
    end = min(len(prices), TRAIN_ROWS + VAL_WINDOWS)
    allv = sc.transform(prices[:end].reshape(-1, 1))[:, 0]
    Xv = np.array([allv[i - LOOKBACK : i] for i in range(TRAIN_ROWS, end)])
    yv = allv[TRAIN_ROWS:end]
    f32 = np.float32
    return (
        X[..., None].astype(f32),
        y.astype(f32),
        Xv[..., None].astype(f32),
        yv.astype(f32),
        source,
    )


# --- fused LSTM written in TensorFlow ops --------------------------------------------------


def make_fused_layer(tf: Any, keras: Any) -> Any:
    """FusedLSTM: Keras-layout weights (gate order i, f, c, o), so reference.py's mapping applies."""

    sys.path.insert(0, str(ROOT))
    # The project's cell maths (lstm_core/fast_lstm.py), here in a static Python unroll.
    from lstm_core.fast_lstm import cell_backward, cell_forward, gate_affine

    def _cell_loop(xz: Any, rk: Any, units: int) -> tuple[list[Any], list[Any]]:
        # xz = x @ kernel + bias for all steps at once (one big matmul, off the recurrence);
        # each step then needs a single (batch, units) @ (units, 4·units) matmul for all gates.
        steps = xz.shape[1]
        scale, shift = gate_affine(units, xz.dtype)
        h = tf.zeros_like(xz[:, 0, :units])
        c = h
        hs, saved = [], []
        for t in range(steps):  # static Python unroll: 60 steps
            c_prev = c
            g, c, h = cell_forward(xz[:, t] + tf.matmul(h, rk), c_prev, scale, shift, units)
            hs.append(h)
            saved.append((g, c, c_prev))
        return hs, saved

    def _bptt(dseq: Any, x: Any, seq: Any, kernel: Any, rk: Any, saved: list, units: int):
        # Same recursion as reference.backward (δh, δC), in packed (i, f, a, o) layout.
        steps = len(saved)
        dh_rec = tf.zeros_like(dseq[:, 0])
        dc_next = dh_rec  # already δC(t+1) ⊙ f(t+1)
        dzs: list[Any] = [None] * steps
        rk_t = tf.transpose(rk)
        for t in range(steps - 1, -1, -1):
            g, c, c_prev = saved[t]
            dz, dc = cell_backward(dseq[:, t] + dh_rec, dc_next, g, c, c_prev, units)
            dh_rec = tf.matmul(dz, rk_t)
            dc_next = dc * g[:, units : 2 * units]
            dzs[t] = dz
        n_in = x.shape[-1]
        dz_flat = tf.reshape(tf.stack(dzs, axis=1), [-1, 4 * units])
        h_prev = tf.concat([tf.zeros_like(seq[:, :1]), seq[:, :-1]], axis=1)
        # Weight gradients summed over all steps by one matmul each (not 60 small ones).
        dkernel = tf.matmul(tf.reshape(x, [-1, n_in]), dz_flat, transpose_a=True)
        drk = tf.matmul(tf.reshape(h_prev, [-1, units]), dz_flat, transpose_a=True)
        dbias = tf.reduce_sum(dz_flat, axis=0)
        dx = tf.reshape(tf.matmul(dz_flat, kernel, transpose_b=True), tf.shape(x))
        return dx, dkernel, drk, dbias

    def lstm_seq(x: Any, kernel: Any, rk: Any, bias: Any, units: int, custom: bool, split: int):
        n_in = x.shape[-1]

        def fwd(xp: Any) -> tuple[Any, list]:
            xz = tf.reshape(
                tf.matmul(tf.reshape(xp, [-1, n_in]), kernel), [-1, xp.shape[1], 4 * units]
            )
            hs, saved = _cell_loop(xz + bias, rk, units)
            return tf.stack(hs, axis=1), saved

        if not custom:
            return fwd(x)[0]

        @tf.custom_gradient
        def run(x: Any, kernel: Any, rk: Any, bias: Any) -> Any:
            # split > 1: independent half-batch chains in one graph, so two threads can run
            # them; their weight gradients add up to the full batch's.
            parts = tf.split(x, split, axis=0) if split > 1 else [x]
            outs = [fwd(p) for p in parts]
            seq = tf.concat([s for s, _ in outs], axis=0) if split > 1 else outs[0][0]

            def grad(dseq: Any) -> tuple[Any, ...]:
                dparts = tf.split(dseq, split, axis=0) if split > 1 else [dseq]
                gs = [
                    _bptt(d, p, s, kernel, rk, sv, units)
                    for d, p, (s, sv) in zip(dparts, parts, outs, strict=True)
                ]
                dx = tf.concat([g[0] for g in gs], axis=0) if split > 1 else gs[0][0]
                return (dx, *(tf.add_n([g[k] for g in gs]) for k in (1, 2, 3)))

            return seq, grad

        return run(x, kernel, rk, bias)

    class FusedLSTM(keras.layers.Layer):
        def __init__(self, units: int, return_sequences: bool = False, custom_grad: bool = True,
                     split: int = 1, **kw: Any) -> None:  # fmt: skip
            super().__init__(**kw)
            self.units, self.return_sequences = units, return_sequences
            self.custom_grad, self.split = custom_grad, split

        def build(self, input_shape: Any) -> None:
            u = self.units
            # Same initializers as keras.layers.LSTM (incl. unit_forget_bias) → same hyperparameters.
            self.kernel = self.add_weight((input_shape[-1], 4 * u), "glorot_uniform", name="kernel")
            self.recurrent_kernel = self.add_weight(
                (u, 4 * u), "orthogonal", name="recurrent_kernel"
            )
            b = keras.initializers.Zeros()
            self.bias = self.add_weight(
                (4 * u,),
                lambda shape, dtype=None: tf.concat(
                    [b((u,), dtype), tf.ones((u,), dtype), b((2 * u,), dtype)], 0
                ),
                name="bias",
            )

        def call(self, x: Any) -> Any:
            seq = lstm_seq(
                x, tf.convert_to_tensor(self.kernel), tf.convert_to_tensor(self.recurrent_kernel),
                tf.convert_to_tensor(self.bias), self.units, self.custom_grad, self.split,
            )  # fmt: skip
            return seq if self.return_sequences else seq[:, -1]

    return FusedLSTM


def check_fused_against_reference(tf: Any, keras: Any, FusedLSTM: Any, custom: bool) -> str:
    """Fused forward vs reference.forward; fused gradient vs reference.backward (float32 vs f64)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from lstm_core import reference as ref

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, LOOKBACK, 3)).astype(np.float32)
    dh = rng.normal(size=(4, LOOKBACK, 7)).astype(np.float32)
    layer = FusedLSTM(7, return_sequences=True, custom_grad=custom, split=2 if custom else 1)
    layer.build((None, LOOKBACK, 3))
    p = ref.from_keras_weights(*(np.asarray(w) for w in layer.get_weights()))
    with tf.GradientTape() as tape:
        seq = layer(tf.constant(x))
        loss = tf.reduce_sum(seq * dh)
    tg = tape.gradient(loss, [layer.kernel, layer.recurrent_kernel, layer.bias])
    cache = ref.forward(p, x)
    fwd_err = float(np.max(np.abs(cache.h - np.asarray(seq))))
    g = ref.to_keras_weights(ref.backward(p, cache, dh_seq=dh))
    grad_err = max(
        float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))
        for a, b in zip(tg, g, strict=False)
    )
    if fwd_err > 1e-5 or grad_err > 1e-4:
        raise AssertionError(
            f"fused LSTM disagrees with reference: fwd {fwd_err:.1e} grad {grad_err:.1e}"
        )
    return f"fwd {fwd_err:.1e}, grad {grad_err:.1e}"


# --- one lever -----------------------------------------------------------------------------


def run_one(name: str, epochs: int) -> dict[str, Any]:
    cfg = LEVERS_ALL[name]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    if "threads" in cfg:  # must happen before the runtime starts
        intra, inter = cfg["threads"]
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    import keras

    tf.get_logger().setLevel("ERROR")
    X, y, Xv, yv, source = load_data()
    keras.utils.set_random_seed(0)

    impl = cfg.get("impl", "keras")
    check = ""
    layers: list[Any] = [keras.Input((LOOKBACK, 1))]
    if impl == "keras":
        for k in range(LAYERS):
            seqs = k < LAYERS - 1
            layers += [
                keras.layers.LSTM(UNITS, return_sequences=seqs, unroll=cfg.get("unroll", False)),
                keras.layers.Dropout(DROPOUT),
            ]
    else:
        FusedLSTM = make_fused_layer(tf, keras)
        custom = impl == "fused_cg"
        check = check_fused_against_reference(tf, keras, FusedLSTM, custom)
        keras.utils.set_random_seed(0)
        for k in range(LAYERS):
            layers += [
                FusedLSTM(UNITS, return_sequences=k < LAYERS - 1, custom_grad=custom,
                          split=cfg.get("split", 1)),
                keras.layers.Dropout(DROPOUT),
            ]  # fmt: skip
    model = keras.Sequential([*layers, keras.layers.Dense(1)])
    model.compile(
        optimizer="adam",
        loss="mean_squared_error",
        jit_compile=cfg.get("jit", False),
        steps_per_execution=cfg.get("spe", 1),
    )

    if cfg.get("data") == "tfdata":
        ds = (
            tf.data.Dataset.from_tensor_slices((X, y))
            .shuffle(len(X), seed=0, reshuffle_each_iteration=True)
            .batch(BATCH)
            .prefetch(tf.data.AUTOTUNE)
        )
        fit_args: dict[str, Any] = {"x": ds}
    else:
        fit_args = {"x": X, "y": y, "batch_size": BATCH, "shuffle": True}

    t0 = time.perf_counter()
    model.fit(**fit_args, epochs=1, verbose=0)
    warmup = time.perf_counter() - t0
    cpu0, t0 = os.times(), time.perf_counter()
    hist = model.fit(**fit_args, epochs=1 + epochs, initial_epoch=1, verbose=0)
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    val = float(model.evaluate(Xv, yv, batch_size=256, verbose=0))
    return {
        "name": name,
        "samples_per_s": len(X) * epochs / wall,
        "s_per_epoch": wall / epochs,
        "warmup_s": warmup,
        "cores": cpu / wall,
        "train_mse": float(hist.history["loss"][-1]),
        "val_mse": val,
        "check": check,
        "source": source,
        "n_train": len(X),
        "n_val": len(Xv),
        "ok": bool(np.isfinite(val)),
    }


# --- driver --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated lever names or prefixes (default: all)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help="also write results as JSON here")
    args = ap.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.epochs)), flush=True)
        return

    names = list(LEVERS)
    if args.only:
        wanted = args.only.split(",")
        names = [n for n in LEVERS_ALL if any(n == w or n.startswith(w) for w in wanted)]
    results: list[dict[str, Any]] = []
    for name in names:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name, "--epochs", str(args.epochs)],
                capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            results.append({"name": name, "error": f"timed out after {TIMEOUT_S} s (compile)"})
            print(f"{name}: TIMEOUT", flush=True)
            continue
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            err = (proc.stderr.strip().splitlines() or ["?"])[-1]
            results.append({"name": name, "error": err})
            print(f"{name}: FAILED ({err})", flush=True)
            continue
        r = json.loads(line[7:])
        results.append(r)
        print(
            f"{name}: {r['samples_per_s']:.0f} samples/s, val_mse {r['val_mse']:.2e} "
            f"({time.perf_counter() - t0:.0f} s incl. start-up)",
            flush=True,
        )

    base = next((r for r in results if r["name"] == "a_baseline" and "error" not in r), None)
    ok = [r for r in results if "error" not in r]
    if ok:
        print(f"\ndata: {ok[0]['source']}, {ok[0]['n_train']} train / {ok[0]['n_val']} val windows, "
              f"batch {BATCH}, {args.epochs} timed epochs after 1 warm-up epoch")  # fmt: skip
    hdr = f"| {'lever':<28} | samples/s | x base | s/epoch | warm-up s | cores | train_mse | val_mse  |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']:<28} | FAILED: {r['error'][:70]} |")
            continue
        ratio = r["samples_per_s"] / base["samples_per_s"] if base else float("nan")
        print(
            f"| {r['name']:<28} | {r['samples_per_s']:9.0f} | {ratio:6.2f} | {r['s_per_epoch']:7.2f} "
            f"| {r['warmup_s']:9.1f} | {r['cores']:5.2f} | {r['train_mse']:9.2e} | {r['val_mse']:.2e} |"
        )
    if ok:
        best = max(ok, key=lambda r: r["samples_per_s"])
        print(f"\nfastest: {best['name']} ({best['samples_per_s']:.0f} samples/s)")
        checks = {r["name"]: r["check"] for r in ok if r["check"]}
        for n, c in checks.items():
            print(f"reference check {n}: {c}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
