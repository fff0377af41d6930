"""Prefect tasks: each one calls one `lstm_core` function or the MLflow module.

Retries with back-off only on I/O (the store, the tracking server). Tasks whose inputs
cannot be hashed (models, arrays, frames) use NO_CACHE; ingestion and loading are cached
on the input file's digest and the store's manifest digest.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from lstm_core import backtest as core_backtest
from lstm_core import data as core_data
from lstm_core import evaluate as core_evaluate
from lstm_core import forecast as core_forecast
from lstm_core import plots as core_plots
from lstm_core import train as core_train
from lstm_core.intervals import ConformalCalibration
from lstm_core.predictor import Forecaster
from pipelines import tracking
from pipelines.config import Settings
from pipelines.ingest import digest_file, read_configured
from pipelines.retries import note_retry
from pipelines.store import Manifest, MergeReport, PriceStore

log = logging.getLogger("pipelines")


def _ingest_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """The input files' digests and the whole store's state (a file may hold any ticker).

    Unchanged files on an unchanged store are not re-read; any change to either, a wiped
    store included, runs the ingestion again.
    """
    settings: Settings = parameters["settings"]
    store = PriceStore(settings.store_path)
    state = hashlib.sha256()
    for t in store.tickers():
        manifest = store.manifest(t)
        state.update(f"{t}:{manifest.digest if manifest else '-'};".encode())
    options = (parameters.get("ticker"), parameters.get("replace"), settings.data.model_dump_json())
    state.update(repr(options).encode())
    try:
        digests = "-".join(digest_file(path) for path in parameters["paths"])
    except OSError:  # no key, no cache: the ingestion itself reports the missing file
        return None
    return f"ingest-{digests}-{settings.store_path}-{state.hexdigest()}"


def _retry_io(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only transient I/O failures, never bad input."""
    from pipelines.errors import PipelineError

    try:
        state.result()
    except tracking.ServerStopped as exc:  # it may be back in a moment (a restart)
        note_retry(f"task {getattr(task, 'name', task)}", exc)
        return True
    except (PipelineError, FileNotFoundError, PermissionError, IsADirectoryError):
        return False  # bad input or a missing file does not heal by waiting
    except (OSError, ConnectionError, TimeoutError) as exc:
        note_retry(f"task {getattr(task, 'name', task)}", exc)
        return True
    except Exception as exc:  # MLflow wraps HTTP failures in MlflowException
        # Two processes writing one SQLite file: some MLflow paths raise SQLAlchemy's own
        # OperationalError once the busy timeout passes. The lock is released soon after.
        transient = type(exc).__name__ in ("MlflowException", "RestException") or (
            "database is locked" in str(exc)
        )
        if transient:
            note_retry(f"task {getattr(task, 'name', task)}", exc)
        return transient
    return False


IO_RETRY = {
    "retries": 3,
    "retry_delay_seconds": [1, 4, 10],
    "retry_jitter_factor": 0.3,
    "retry_condition_fn": _retry_io,
}


def ingest_files(
    settings: Settings, paths: list[str], ticker: str | None = None, replace: bool | None = None
) -> list[list[MergeReport]]:
    """Read and validate every file, then merge them as one (atomic, locked, all or none):
    each file's reports, one a ticker. A refused file leaves the store as it was."""
    d = settings.data
    parsed = [read_configured(d, path, ticker) for path in paths]
    replace = d.replace if replace is None else replace
    return PriceStore(settings.store_path).merge_files(parsed, replace=replace)


def ingest_file(
    settings: Settings, path: str, ticker: str | None = None, replace: bool | None = None
) -> list[MergeReport]:
    """:func:`ingest_files` for one file: its reports, one a ticker."""
    return ingest_files(settings, [path], ticker, replace)[0]


ingest = task(
    ingest_files, name="ingest", cache_key_fn=_ingest_key, persist_result=True, **IO_RETRY
)


def _load_key(context: Any, parameters: dict[str, Any]) -> str | None:
    settings: Settings = parameters["settings"]
    manifest = PriceStore(settings.store_path).manifest(parameters["ticker"])
    if manifest is None:
        return None
    return f"load-{settings.store_path}-{manifest.ticker}-{manifest.digest}"


@task(name="load-prices", cache_key_fn=_load_key, persist_result=True, **IO_RETRY)
def load_prices(settings: Settings, ticker: str) -> tuple[pd.DataFrame, Manifest]:
    store = PriceStore(settings.store_path)
    manifest = store.manifest(ticker)
    if manifest is None:
        from pipelines.errors import PipelineError

        raise PipelineError(
            f"no prices stored for ticker {ticker!r} in {settings.store_path}; "
            "ingest a file first (lstm-pipeline ingest FILE --ticker T)"
        )
    return store.load(ticker), manifest


@task(name="split", cache_policy=NO_CACHE)
def split(frame: pd.DataFrame, settings: Settings) -> core_data.SplitFrames:
    return core_data.split_frame(frame, settings.evaluation)


@task(name="fit-scaler", cache_policy=NO_CACHE)
def fit_scaler(frames: core_data.SplitFrames, settings: Settings) -> core_data.Preprocessor:
    # The scaler sees the training rows only.
    return core_data.fit_preprocessor(frames.train, settings.features)


@task(name="window", cache_policy=NO_CACHE)
def window(
    frames: core_data.SplitFrames, preprocessor: core_data.Preprocessor
) -> core_data.WindowedData:
    return core_data.make_dataset(frames, preprocessor)


class _Progress:
    """A Keras callback printing one line per epoch (what the user sees while training)."""

    def __new__(cls, ticker: str, epochs: int):
        import keras

        class _P(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                logs = logs or {}
                log.info(
                    "%s epoch %d/%d  loss %.5f  val_loss %s",
                    ticker,
                    epoch + 1,
                    epochs,
                    logs.get("loss", float("nan")),
                    f"{logs['val_loss']:.5f}" if "val_loss" in logs else "-",
                )

        return _P()


# The tasks that call MLflow fail with one line when its server stops answering: Prefect
# logs no traceback for that user error (runtime._NoUserErrors).
@task(name="train", cache_policy=NO_CACHE)
@tracking.server_answers()
def train(data: core_data.WindowedData, settings: Settings, run_id: str, ticker: str):
    callbacks = [tracking.epoch_logger(run_id), _Progress(ticker, settings.training.epochs)]
    return core_train.train_network(
        settings.model, settings.training, data.train, data.val, callbacks
    )


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(
    model: Any,
    data: core_data.WindowedData,
    calibration: ConformalCalibration,
    settings: Settings,
):
    return core_evaluate.evaluate_model(model, data, settings.evaluation, calibration)


@task(name="calibrate", cache_policy=NO_CACHE)
def calibrate(
    model: Any,
    frames: core_data.SplitFrames,
    preprocessor: core_data.Preprocessor,
    settings: Settings,
) -> ConformalCalibration:
    """Conformal scores of the served N-day forecasts on the validation days."""
    ev = settings.evaluation
    return core_forecast.calibrate_recursive(
        model, preprocessor, frames, ev.forecast_days, ev.interval_levels
    )


@task(name="backtest", cache_policy=NO_CACHE)
def backtest(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    # the folds retrain the registered configuration: same network, engine and epochs
    return core_backtest.walk_forward_backtest(
        frame, settings.features, settings.evaluation, settings.model, settings.training
    )


@task(name="plots", cache_policy=NO_CACHE)
def plots(
    evaluation: Any, history: dict, folds: pd.DataFrame | None, ticker: str, target: str
) -> dict:
    figures = {
        "test_predictions": core_plots.plot_predictions(evaluation.predictions, ticker, target),
        "loss": core_plots.plot_loss(history, ticker),
    }
    if folds is not None and len(folds):
        figures["backtest"] = core_plots.plot_backtest(folds, ticker)
    return figures


@task(name="log-run", cache_policy=NO_CACHE, **IO_RETRY)
@tracking.server_answers()
def log_results(
    run_id: str, metrics: dict[str, float], figures: dict, predictions: pd.DataFrame
) -> list[str]:
    tracking.log_metrics(run_id, metrics)
    tracking.log_table(run_id, predictions, "evaluation/test_predictions.csv")
    return tracking.log_figures(run_id, figures)


@task(name="log-model", cache_policy=NO_CACHE, **IO_RETRY)
@tracking.server_answers()
def log_model(
    run_id: str,
    forecaster: Forecaster,
    example: pd.DataFrame,
    workdir: Path,
    name: str,
    ticker: str,
) -> str:
    return tracking.log_forecaster(
        run_id, forecaster, workdir / "forecaster", example, name=name, ticker=ticker
    )


@task(name="register", cache_policy=NO_CACHE, **IO_RETRY)
@tracking.server_answers()
def register(name: str, model_uri: str, run_id: str, tags: dict[str, str]):
    return tracking.register(name, model_uri, run_id, tags)


# Not a Prefect task: a champion that cannot be re-scored is a refusal with its reason (see
# promotion.promote), not a failed task run, whose ERROR line would be Prefect's and not the
# user's. No retries either: they held the promotion lock for 15 s to fail the same way on a
# champion whose files are gone, and a refusal on a passing blip is safe (promote by hand).
def rescore_champion(
    name: str,
    version: str,
    frame: pd.DataFrame,
    test_dates: Any,
    metric: str,
    train_end: int,
    workdir: Path,
) -> float:
    """The champion's error on the challenger's test window (same targets)."""
    folder = tracking.download_forecaster(name, version, workdir / f"champion-v{version}")
    champion = Forecaster.load(folder)
    return core_evaluate.score_on_dates(champion, frame, test_dates, metric, train_end)


def ingest_cached(
    settings: Settings, paths: list[str], ticker: str | None = None
) -> list[list[MergeReport]]:
    """`ingest`, trusting a cached result only if the store still holds what it reported.

    The cache key sees the store's state before ingesting; a store wiped back to an earlier
    state would otherwise get an old report and no rows.
    """
    reports = ingest(settings, paths, ticker)
    store = PriceStore(settings.store_path)
    # a ticker in several files: the last file's report holds what the store should hold
    final = {r.ticker: r.after for file_reports in reports for r in file_reports}
    for t, after in final.items():
        current = store.manifest(t)
        if current is None or after is None or current.digest != after.digest:
            return ingest.with_options(refresh_cache=True)(settings, paths, ticker)
    return reports
