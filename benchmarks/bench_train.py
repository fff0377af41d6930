"""Training throughput: the tutorial's script vs the project's training path, plus serving latency.

Usage:  .venv/bin/python benchmarks/bench_train.py [--epochs 4] [--calls 200]

In one process and on the same data:

(a) a faithful re-implementation of the tutorial's script (seed/keras-lstm-tutorial.txt):
    opening prices of 平安银行.csv (GB18030, 开盘价(元)), MinMaxScaler fitted on the whole column
    exactly as the tutorial does (``sc.fit_transform(training_set)``), 60-day windows
    ``range(60, 2035)``, four LSTM(50) + Dropout(0.2), Dense(1), Adam, MSE, batch 32, NumPy
    arrays into ``model.fit`` (shuffled, as ``fit``'s default);
(b) the project's path: ``lstm_core.model.build_model(ModelConfig(), ...)`` (the same plain
    Keras network) + ``lstm_core.train.train_model(..., TrainingConfig(epochs=E, batch_size=32),
    backend=B)``: backend "fast" (default) trains it in the Numba engine (lstm_core/engine/),
    ``--backend keras`` with keras' fit.

Both get the same held-out validation set: the next 300 windows (targets rows 2035..2334),
scaled with the same scaler, evaluated at the end of every epoch (so epoch times include one
validation pass for both).  Throughput = training windows x (E - 1) / wall time of epochs
2..E (epoch 1 holds tracing / XLA compilation and is reported separately).  The two paths
alternate epoch by epoch (the tutorial's epochs run from a callback between the project's
epochs, outside its timed span), so load from other processes hits both alike.  Without the CSV
the bundled data/msft.csv ``Open`` column is used the same way.

Then inference: a Forecaster (trained project model + fitted Preprocessor) is logged with
``pipelines.tracking.log_forecaster`` into a temporary MLflow SQLite store, loaded back with
``mlflow.pyfunc.load_model`` in this process, and ``predict`` is timed on a 61-row frame.

The machine is shared: compare the two paths by their ratio within one run, not across runs.
The last line is ``speedup: <project samples/s / tutorial samples/s>x``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED_CSV = ROOT.parent / "shared" / "data" / "平安银行.csv"
FALLBACK_CSV = ROOT / "data" / "msft.csv"
LOOKBACK, TRAIN_END, VAL_WINDOWS = 60, 2035, 300
UNITS, LAYERS, DROPOUT, BATCH, N_FEATURES = 50, 4, 0.2, 32, 1


# --- data ------------------------------------------------------------------------------------


def load_prices() -> tuple[Any, str]:
    """(frame with 'date' and 'open', description) from the tutorial's CSV, else msft.csv."""
    import pandas as pd

    if SHARED_CSV.exists():
        raw = pd.read_csv(SHARED_CSV, encoding="gb18030")
        frame = pd.DataFrame(
            {"date": pd.to_datetime(raw["日期"]), "open": raw["开盘价(元)"].astype(float)}
        )
        return frame, f"{SHARED_CSV.name} 开盘价(元), {len(frame)} rows"
    raw = pd.read_csv(FALLBACK_CSV)
    frame = pd.DataFrame({"date": pd.to_datetime(raw["Date"]), "open": raw["Open"].astype(float)})
    return frame, f"{FALLBACK_CSV.relative_to(ROOT)} Open, {len(frame)} rows (tutorial CSV absent)"


def train_end(frame: Any) -> int:
    """The tutorial's 2035, or fewer on a shorter file (msft.csv), leaving the validation days."""
    return min(TRAIN_END, len(frame) - VAL_WINDOWS)


def tutorial_windows(frame: Any) -> tuple[Any, Any, Any, Any]:
    """The tutorial's scaling and windows; validation = the following 300 windows."""
    import numpy as np
    from sklearn.preprocessing import MinMaxScaler

    training_set = frame[["open"]].to_numpy()  # dataset_train.iloc[:, 1:2].values
    sc = MinMaxScaler(feature_range=(0, 1))
    scaled = sc.fit_transform(training_set)  # as the tutorial: fitted on the whole column
    X_train, y_train = [], []
    last = train_end(frame)
    for i in range(LOOKBACK, last):
        X_train.append(scaled[i - LOOKBACK : i, 0])
        y_train.append(scaled[i, 0])
    X_train, y_train = np.array(X_train), np.array(y_train)
    X_train = np.reshape(X_train, (X_train.shape[0], X_train.shape[1], 1))
    end = min(len(scaled), last + VAL_WINDOWS)
    X_val = np.array([scaled[i - LOOKBACK : i, 0] for i in range(last, end)])[..., None]
    y_val = scaled[last:end, 0]
    return X_train, y_train, X_val, y_val


# --- timing helpers --------------------------------------------------------------------------


def epoch_timer() -> Any:
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []  # process CPU time (all threads)
            self._t0 = self._c0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self._t0)
            self.cpu_seconds.append(time.process_time() - self._c0)

    return EpochTimer()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def lstm_flops_per_sample() -> float:
    """Multiply-adds of the LSTM stack for one window, forward + backward (x3), as FLOPs (x2)."""
    macs, n_in = 0, N_FEATURES
    for _ in range(LAYERS):
        macs += 4 * UNITS * (n_in + UNITS)  # four gates, [x_t, h_{t-1}] -> units, per step
        n_in = UNITS
    return 2.0 * 3.0 * LOOKBACK * macs


def peak_flops() -> tuple[float, str]:
    """Estimated fp32 peak FLOP/s: cores x clock x FLOPs/cycle from the ISA flags."""
    flags: set[str] = set()
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "cpu MHz" and not mhz:
                mhz = float(value)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 32, "AVX2+FMA: 2 FMA units x 8 fp32 lanes x 2"
    elif "avx" in flags:
        per_cycle, isa = 16, "AVX: 8 fp32 lanes x (add + mul)"
    else:
        per_cycle, isa = 8, "SSE: 4 fp32 lanes x (add + mul)"
    mhz = mhz or 2000.0
    peak = float(cores or 1) * mhz * 1e6 * per_cycle
    how = (
        f"estimate: {cores} cores x {mhz / 1000:.2f} GHz (/proc/cpuinfo 'cpu MHz') x {per_cycle} "
        f"FLOP/cycle ({isa}); assumes 2 FMA pipes per core, no turbo"
    )
    return peak, how


# --- the two training paths ------------------------------------------------------------------


def build_tutorial(X: Any, seed: int) -> Any:
    import keras
    from keras.layers import LSTM, Dense, Dropout
    from keras.models import Sequential

    keras.utils.set_random_seed(seed)  # the tutorial is unseeded; seeded here for repeatability
    regressor = Sequential()
    regressor.add(keras.Input((X.shape[1], 1)))  # = input_shape=(X_train.shape[1], 1)
    regressor.add(LSTM(units=50, return_sequences=True))
    regressor.add(Dropout(0.2))
    regressor.add(LSTM(units=50, return_sequences=True))
    regressor.add(Dropout(0.2))
    regressor.add(LSTM(units=50, return_sequences=True))
    regressor.add(Dropout(0.2))
    regressor.add(LSTM(units=50))
    regressor.add(Dropout(0.2))
    regressor.add(Dense(units=1))
    regressor.compile(optimizer="adam", loss="mean_squared_error")
    return regressor


class TutorialRun:
    """The tutorial's ``regressor.fit(X, y, epochs=E, batch_size=32)``, one epoch at a time.

    ``fit(initial_epoch=e, epochs=e + 1)`` continues the same optimizer state and RNG streams,
    so E calls train exactly like one E-epoch call; splitting it lets the benchmark interleave
    the two paths epoch by epoch, so load from other processes hits both alike.
    """

    def __init__(self, X: Any, y: Any, Xv: Any, yv: Any, seed: int) -> None:
        self.model = build_tutorial(X, seed)
        self.data = (X, y, Xv, yv)
        self.epoch_s: list[float] = []
        self.cpu_s: list[float] = []
        self.history: dict[str, list[float]] = {"loss": [], "val_loss": []}

    def epoch(self) -> None:
        X, y, Xv, yv = self.data
        e = len(self.epoch_s)
        timer = epoch_timer()
        hist = self.model.fit(
            X, y, epochs=e + 1, initial_epoch=e, batch_size=32, validation_data=(Xv, yv),
            callbacks=[timer], verbose=0,
        )  # fmt: skip
        self.epoch_s += timer.seconds
        self.cpu_s += timer.cpu_seconds
        for key in self.history:
            self.history[key] += hist.history[key]


def train_both(
    X: Any,
    y: Any,
    Xv: Any,
    yv: Any,
    epochs: int,
    seed: int,
    backend: str = "fast",
) -> dict[str, Any]:
    """Tutorial epoch 1, then project epoch k followed by tutorial epoch k+1 (interleaved)."""
    import keras

    from lstm_core.config import ModelConfig, TrainingConfig
    from lstm_core.model import build_model
    from lstm_core.train import train_model

    tutorial = TutorialRun(X, y, Xv, yv, seed)
    tutorial.epoch()

    class Interleave(keras.callbacks.Callback):
        # runs after the project's epoch timer has stopped, before its next epoch starts
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if len(tutorial.epoch_s) < epochs:
                tutorial.epoch()

    model_cfg = ModelConfig(backend=backend)
    model = build_model(model_cfg, lookback=LOOKBACK, n_features=N_FEATURES, seed=seed)
    timer = epoch_timer()
    result = train_model(
        model,
        X,
        y.reshape(-1, 1),
        Xv,
        yv.reshape(-1, 1),
        TrainingConfig(epochs=epochs, batch_size=BATCH, seed=seed),
        callbacks=[timer, Interleave()],
        backend=backend,
    )
    how = "the Numba engine (lstm_core.engine)" if backend == "fast" else "keras fit"
    return {
        "tutorial": {
            "model": tutorial.model, "history": tutorial.history, "epoch_s": tutorial.epoch_s,
            "cpu_s": tutorial.cpu_s,
        },
        "project": {
            "model": result.model,
            "history": result.history,
            "epoch_s": timer.seconds,
            "cpu_s": timer.cpu_seconds,
            "what": f"backend={model_cfg.backend!r} (plain keras layers), trained by {how}",
        },
    }  # fmt: skip


# --- serving latency -------------------------------------------------------------------------


def serving_latency(model: Any, frame: Any, calls: int) -> dict[str, float]:
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    from lstm_core.config import FeatureConfig
    from lstm_core.data import fit_preprocessor
    from lstm_core.predictor import Forecaster
    from pipelines.tracking import log_forecaster

    # The network was trained on MinMax-scaled prices fitted on the whole column, which is
    # what fit_preprocessor computes for target_transform="price" on the whole frame.
    features = FeatureConfig(lookback=LOOKBACK, target_transform="price")
    forecaster = Forecaster(model, fit_preprocessor(frame, features))
    last = train_end(frame)
    example = frame.iloc[last - LOOKBACK - 1 : last].reset_index(drop=True)  # 61 rows
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp_path = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        exp = mlflow.create_experiment("bench", artifact_location=str(tmp_path / "artifacts"))
        client = MlflowClient()
        run_id = client.create_run(exp).info.run_id
        t0 = time.perf_counter()
        uri = log_forecaster(
            run_id, forecaster, tmp_path / "forecaster", example, name="bench-MSFT", ticker="MSFT"
        )
        log_s = time.perf_counter() - t0
        client.set_terminated(run_id)
        t0 = time.perf_counter()
        pyfunc = mlflow.pyfunc.load_model(uri)
        load_s = time.perf_counter() - t0
        first = pyfunc.predict(example)  # traces the inference function
        ms = []
        for _ in range(calls):
            t0 = time.perf_counter()
            out = pyfunc.predict(example)
            ms.append((time.perf_counter() - t0) * 1000.0)
        assert float(out["forecast"].iloc[0]) == float(first["forecast"].iloc[0])
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "log_s": log_s,
        "load_s": load_s,
        "forecast": float(first["forecast"].iloc[0]),
        "actual": float(frame["open"].iloc[last]),
    }


# --- driver ----------------------------------------------------------------------------------


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from lstm_core.model import BACKENDS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4, help="epochs per path (>= 2; default 4)")
    ap.add_argument("--calls", type=int, default=200, help="timed pyfunc predict calls")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--backend", default="fast", choices=BACKENDS, help="project path's backend")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (epoch 1 is excluded from the timing)")

    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")

    frame, source = load_prices()
    X, y, Xv, yv = tutorial_windows(frame)
    print(f"data: {source}; {len(X)} training windows (range(60, {train_end(frame)})), "
          f"{len(Xv)} validation windows; batch {BATCH}, {args.epochs} epochs")  # fmt: skip
    print(f"timing: epochs 2..{args.epochs} (epoch 1 = tracing/compile, shown apart); each "
          "epoch includes one validation pass; the two paths alternate epoch by epoch")  # fmt: skip

    t0 = time.perf_counter()
    runs = train_both(X, y, Xv, yv, args.epochs, args.seed, args.backend)
    print(f"  trained both in {time.perf_counter() - t0:.1f} s", flush=True)
    for r in runs.values():
        r["sps"] = len(X) * (args.epochs - 1) / sum(r["epoch_s"][1:])
        r["median_sps"] = len(X) / float(np.median(r["epoch_s"][1:]))
        r["cores"] = sum(r["cpu_s"][1:]) / sum(r["epoch_s"][1:])
        r["cpu_sps"] = len(X) * (args.epochs - 1) / sum(r["cpu_s"][1:])
    rss_train = peak_rss_mb()

    flops = lstm_flops_per_sample()
    peak, how = peak_flops()
    print()
    print("| path     | samples/s | epoch 1 s | epochs 2..E s | train loss | val loss | "
          "% of peak |")  # fmt: skip
    print("|----------|-----------|-----------|---------------|------------|----------|"
          "-----------|")  # fmt: skip
    for name, r in runs.items():
        epochs = " ".join(f"{s:.2f}" for s in r["epoch_s"][1:])
        print(
            f"| {name:<8} | {r['sps']:9.0f} | {r['epoch_s'][0]:9.1f} | {epochs:<13} "
            f"| {r['history']['loss'][-1]:10.3e} | {r['history']['val_loss'][-1]:8.3e} "
            f"| {100 * r['sps'] * flops / peak:8.2f}% |"
        )
    print(f"project path: {runs['project']['what']}; tutorial: keras.layers.LSTM, plain fit")
    ratio_med = runs["project"]["median_sps"] / runs["tutorial"]["median_sps"]
    print(f"ratio of median epoch times (less sensitive to load spikes): {ratio_med:.2f}x")
    print(
        f"cores busy (process CPU / wall, epochs 2..E): tutorial {runs['tutorial']['cores']:.2f}, "
        f"project {runs['project']['cores']:.2f}; windows per CPU-second: ratio "
        f"{runs['project']['cpu_sps'] / runs['tutorial']['cpu_sps']:.2f}x (load-insensitive check)"
    )
    print(f"peak RSS after training both (ru_maxrss, whole process): {rss_train:.0f} MB")
    print(f"LSTM work: {flops / 1e6:.1f} MFLOP per window (fwd+bwd, 2 x 3 x {LOOKBACK} steps x "
          f"sum of 4*{UNITS}*(inputs+{UNITS}) per layer)")  # fmt: skip
    print(f"peak: {peak / 1e9:.0f} GFLOP/s fp32 ({how})")
    val_ratio = (
        runs["project"]["history"]["val_loss"][-1] / runs["tutorial"]["history"]["val_loss"][-1]
    )
    print(f"val loss project/tutorial: {val_ratio:.2f}")

    lat = serving_latency(runs["project"]["model"], frame, args.calls)
    print()
    print(f"inference (pyfunc in-process, 61-row frame, {args.calls} calls): "
          f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms (target p50 < 20 ms); "
          f"log_model {lat['log_s']:.1f} s, load {lat['load_s']:.1f} s; "
          f"forecast {lat['forecast']:.2f} vs actual {lat['actual']:.2f}")  # fmt: skip
    print(f"peak RSS after inference: {peak_rss_mb():.0f} MB")
    ratio = runs["project"]["sps"] / runs["tutorial"]["sps"]
    print(
        f"samples/s: project {runs['project']['sps']:.0f} / tutorial {runs['tutorial']['sps']:.0f}"
    )
    print(f"speedup: {ratio:.2f}x")


if __name__ == "__main__":
    main()
