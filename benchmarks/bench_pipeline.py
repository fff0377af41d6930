"""Seconds per phase of the main job for one ticker: is the evaluation cheap next to the training?

Usage:  .venv/bin/python benchmarks/bench_pipeline.py [--set key=value ...]

Runs the training job's steps for the bundled sample (data/msft.csv, ticker MSFT) with the
default configuration (mlflow.yaml; ``--set`` overrides keys as the CLI does) in a temporary
project folder with its own MLflow SQLite store, so the checkout is left untouched.  Each phase
calls the same task bodies as the training flow (``pipelines.tasks``, ``task.fn``: no Prefect
API) in the flow's order, timed one by one:

    ingest                        read the sample, validate, merge into the store
    prepare                       load from the store, split, fit the scaler, windows
    train                         training (train part, validation loss every epoch)
    predict and metrics           deterministic test predictions, metrics against the baselines
    intervals (conformal)         scores the validation days (one-day and recursive N-day
                                  forecasts) and bands the test days
    backtest                      the walk-forward folds (each retrains the configuration)
    plots                         figures, logged with the metrics and the predictions table
    model logging and registration   log_model (pyfunc + .keras) and register the version

It also prints each backtest fold's training seconds against the main training's seconds per
training window (a fold trains on more windows than the train part).  The last line reads
``overhead: <x>``: the seconds of every phase except train and backtest, divided by train's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
ROOT = Path(__file__).resolve().parents[1]
TICKER = "MSFT"


class Phases:
    """Wall seconds per phase, and the process's CPU seconds (a check on a busy machine)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def time(self, name: str, fn, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - t0
        self.cpu[name] = time.process_time() - c0
        print(f"  {name}: {self.seconds[name]:.2f} s", flush=True)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        project = Path(tmp)
        shutil.copy(ROOT / "mlflow.yaml", project / "mlflow.yaml")
        (project / "data").mkdir()
        shutil.copy(ROOT / "data" / "msft.csv", project / "data" / "msft.csv")
        os.chdir(project)  # anything relative lands in the temporary project
        run(project, args.overrides)


def run(project: Path, overrides: list[str]) -> None:
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from lstm_core import train as core_train
    from lstm_core.evaluate import evaluate_forecasts, predict_prices
    from lstm_core.predictor import Forecaster
    from pipelines import tasks, tracking
    from pipelines.config import load_settings

    settings = load_settings(project / "mlflow.yaml", overrides)
    ev = settings.evaluation
    phases = Phases()
    print(f"MSFT sample, {settings.training.epochs} epochs, backend {settings.model.backend}, "
          f"{ev.backtest_folds} backtest folds", flush=True)  # fmt: skip
    job_start = time.perf_counter()

    phases.time("ingest", tasks.ingest_file, settings, str(project / "data" / "msft.csv"), TICKER)

    def prepare():
        frame, manifest = tasks.load_prices.fn(settings, TICKER)
        frames = tasks.split.fn(frame, settings)
        preprocessor = tasks.fit_scaler.fn(frames, settings)
        return frame, manifest, frames, preprocessor, tasks.window.fn(frames, preprocessor)

    frame, manifest, frames, preprocessor, data = phases.time("prepare", prepare)
    experiment_id = tracking.connect(settings)
    run_id = tracking.start_run(settings, experiment_id, TICKER, {})
    tracking.log_params(run_id, settings)

    trained = phases.time("train", tasks.train.fn, data, settings, run_id, TICKER)
    train_s = phases.seconds["train"]

    def predict_and_metrics():
        predicted = predict_prices(trained.model, data.test, preprocessor)
        return predicted, evaluate_forecasts(data, predicted, ev)

    predicted, _ = phases.time("predict and metrics", predict_and_metrics)

    def intervals_phase():
        calibration = tasks.calibrate.fn(trained.model, frames, preprocessor, settings)
        return calibration.bands(predicted), calibration

    intervals, calibration = phases.time("intervals (conformal)", intervals_phase)
    evaluation = evaluate_forecasts(data, predicted, ev, intervals)  # scoring only

    fold_trainings: list[tuple[float, int]] = []  # (seconds, training windows)
    real_train = core_train.train_model

    def timed_fold(model, X, *a, **k):  # each fold's training, to compare with the main one
        t0 = time.perf_counter()
        out = real_train(model, X, *a, **k)
        fold_trainings.append((time.perf_counter() - t0, len(X)))
        return out

    core_train.train_model = timed_fold
    try:
        folds = phases.time("backtest", tasks.backtest.fn, frames.frame, settings)
    finally:
        core_train.train_model = real_train

    def plots():
        figures = tasks.plots.fn(
            evaluation, trained.history, folds, TICKER, settings.features.target
        )
        metrics = dict(evaluation.metrics)
        metrics["backtest_mean_rmse"] = float(folds["rmse"].mean()) if len(folds) else 0.0
        return tasks.log_results.fn(run_id, metrics, figures, evaluation.predictions)

    phases.time("plots", plots)

    def log_and_register():
        forecaster = Forecaster(trained.model, preprocessor, calibration)
        example = frame.tail(preprocessor.rows_needed).reset_index(drop=True)
        name = settings.registry.name_for(TICKER)
        with tempfile.TemporaryDirectory(prefix="lstm-", dir=project) as work:
            uri = tasks.log_model.fn(run_id, forecaster, example, Path(work), name, TICKER)
        return tasks.register.fn(name, uri, run_id, {tracking.TAG_TICKER: TICKER})

    phases.time("model logging and registration", log_and_register)
    tracking.end_run(run_id, True)
    total = time.perf_counter() - job_start

    print("\n| phase | seconds | process CPU seconds |\n|---|---|---|")
    for name, seconds in phases.seconds.items():
        print(f"| {name} | {seconds:.2f} | {phases.cpu[name]:.2f} |")
    print(f"| (whole job, run bookkeeping included) | {total:.2f} | |")
    per_window = train_s / len(data.train)
    for i, (seconds, windows) in enumerate(fold_trainings):
        print(f"backtest fold {i + 1}: training {seconds:.2f} s on {windows} windows, "
              f"{seconds / (per_window * windows):.2f}x the main training's time per window "
              "(the main training also runs a validation pass every epoch)")  # fmt: skip
    other = sum(s for k, s in phases.seconds.items() if k not in ("train", "backtest"))
    print(f"overhead: {other / train_s:.3f}")


if __name__ == "__main__":
    main()
