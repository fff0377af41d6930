"""The training flow: store -> split -> scale -> window -> train -> evaluate -> log ->
register -> promote, one branch per ticker."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lstm_core.backtest import fold_bounds
from lstm_core.data import DataError
from lstm_core.predictor import Forecaster
from pipelines import artifacts, promotion, provenance, tasks, tracking
from pipelines.calendar import check_stored_days, closed_weekdays
from pipelines.config import Settings
from pipelines.errors import FOLDS_ADVICE, PipelineError
from pipelines.flows.common import (
    Summary,
    TickerResult,
    end_run,
    publish_results,
    resolve_settings,
    run_name,
)
from pipelines.flows.forecast import first_forecast
from pipelines.runtime import quiet_tensorflow
from pipelines.store import Manifest, PriceStore, describe

log = logging.getLogger("pipelines")


@tracking.server_answers()
def _promote(
    settings: Settings,
    ticker: str,
    version: str,
    metrics: dict[str, float],
    frame: pd.DataFrame,
    test_dates: Any,
    train_end: int,
    workdir: Path,
) -> promotion.Decision:
    """Compare with the champion on the same window, then record and apply the decision."""
    name = settings.registry.name_for(ticker)
    metric = settings.registry.promotion.metric

    def rescore(champion: str) -> float:
        return tasks.rescore_champion(name, champion, frame, test_dates, metric, train_end, workdir)

    return promotion.promote(settings, ticker, version, metrics, rescore)


promote = task(_promote, name="promote", cache_policy=NO_CACHE)


def train_one(
    settings: Settings,
    ticker: str,
    source: str | None = None,
    run_tags: dict[str, str] | None = None,
    prices: tuple[pd.DataFrame, Manifest] | None = None,
    read: tuple[str, ...] = (),
    read_as: str | None = None,
) -> TickerResult:
    """The training pipeline for one ticker: store -> ... -> register -> promote.

    `prices`: the ticker's stored rows and their manifest, when the caller has read them
    already (retrain's decision); else they are loaded here. `read`: the files the command
    ingested this ticker's rows from (`read_as`: the ticker given for them), for the run's
    params. A promoted version forecasts at once, and that forecast goes to the forecast log.
    """
    quiet_tensorflow()  # in a served run or a Dask worker this is the first TF import
    frame, manifest = prices if prices is not None else tasks.load_prices(settings, ticker)
    # prices stored under another data.calendar (a `--set` given to ingest only): refused
    # here, before any run, as ingest would have refused them
    check_stored_days(ticker, frame["date"], settings.data.calendar)
    frames = tasks.split(frame, settings)
    preprocessor = tasks.fit_scaler(frames, settings)
    data = tasks.window(frames, preprocessor)
    log.info(
        "%s: %d rows %s..%s; windows train %d, validation %d, test %d (lookback %d)",
        ticker,
        manifest.rows,
        manifest.first_date,
        manifest.last_date,
        len(data.train),
        len(data.val),
        len(data.test),
        data.lookback,
    )
    try:  # the folds the backtest will cut, before any MLflow run exists
        fold_bounds(len(frames.frame), settings.evaluation)
    except DataError as exc:
        raise PipelineError(
            f"cannot backtest {ticker} on its {manifest.rows} stored rows: {exc}: {FOLDS_ADVICE}"
        ) from None

    # the served model carries the exchange's closures after its data: serving needs no calendar
    holidays = closed_weekdays(settings.data.calendar, manifest.last_date)
    experiment_id = tracking.connect(settings)
    data_tags = {
        tracking.TAG_DATA_LAST_DATE: str(manifest.last_date),
        tracking.TAG_DATA_DIGEST: manifest.digest,
        tracking.TAG_DATA_ROWS: str(manifest.rows),
        # whose version it is, for promotion, status and forecast (see provenance.whose)
        tracking.TAG_PROJECT: provenance.project_id(settings, create=True),
    }
    run_id = tracking.start_run(settings, experiment_id, ticker, {**data_tags, **(run_tags or {})})
    result = TickerResult(ticker=ticker, run_id=run_id)
    try:
        tracking.log_params(run_id, settings, read, read_as)
        tracking.log_dataset(
            run_id,
            frame,
            source=source or str(settings.store_path / f"ticker={ticker}"),
            digest=manifest.digest,
            name=f"{ticker} {manifest.first_date}..{manifest.last_date}",
        )
        trained = tasks.train(data, settings, run_id, ticker)
        ev = settings.evaluation
        log.info("%s: evaluating on %d test days (conformal intervals)", ticker, len(data.test))
        calibration = tasks.calibrate(trained.model, frames, preprocessor, settings)
        evaluation = tasks.evaluate(trained.model, data, calibration, settings)
        if ev.backtest_folds > 0:
            log.info(
                "%s: backtest: retraining %d walk-forward fold(s) of %d epoch(s)",
                ticker,
                ev.backtest_folds,
                ev.backtest_epochs or settings.training.epochs,
            )
        folds = tasks.backtest(frames.frame, settings) if ev.backtest_folds > 0 else None
        figures = tasks.plots(evaluation, trained.history, folds, ticker, settings.features.target)
        metrics = dict(evaluation.metrics)
        if folds is not None and len(folds):
            metrics["backtest_mean_skill"] = float(folds["skill"].mean())
            metrics["backtest_mean_rmse"] = float(folds["rmse"].mean())
        metrics["epochs_run"] = float(trained.epochs_run)
        if calibration is not None:
            metrics.update(calibration.metrics())
        result.metrics = metrics
        result.plots = tasks.log_results(run_id, metrics, figures, evaluation.predictions)
        result.artifact_uri = tracking.artifact_uri(run_id)

        forecaster = Forecaster(
            trained.model, preprocessor, calibration, holidays, max_days=ev.forecast_days
        )
        example = frame.tail(preprocessor.rows_needed).reset_index(drop=True)
        with tempfile.TemporaryDirectory(prefix="lstm-") as tmp:
            workdir = Path(tmp)
            log.info("%s: logging the model, registering, deciding promotion", ticker)
            name = settings.registry.name_for(ticker)
            model_uri = tasks.log_model(run_id, forecaster, example, workdir, name, ticker)
            registered = tasks.register(
                name,
                model_uri,
                run_id,
                {tracking.TAG_TICKER: ticker, tracking.TAG_RUN_ID: run_id, **data_tags},
            )
            result.version = registered.version
            test_dates = data.test.target_dates[:, 0]
            decision = promote(
                settings,
                ticker,
                registered.version,
                metrics,
                frames.frame,
                test_dates,
                data.train_end,
                workdir,
            )
        result.promoted, result.reason = decision.promote, decision.reason
    except BaseException as exc:
        # the run's own error is the one to tell: a tracking server that stopped answering
        # cannot end the run either (the next command marks it FAILED: settle_orphaned_runs)
        with contextlib.suppress(Exception):
            tracking.end_run(run_id, False)
        if isinstance(exc, tracking.ServerStopped) and result.version is not None:
            name = settings.registry.name_for(ticker)
            left = f"{name} version {result.version} was registered, no promotion decided"
            raise tracking.ServerStopped(exc.uri, exc.reason, outcome=left) from None
        raise
    tracking.end_run(run_id, True)
    if result.promoted:
        first_forecast(settings, ticker)
    return result


train_ticker = task(train_one, name="train-ticker", cache_policy=NO_CACHE)


def map_tickers(
    settings: Settings,
    tickers: list[str],
    branch: Any = train_ticker,
    kwargs: dict[str, dict[str, Any]] | None = None,
) -> list[TickerResult]:
    """One `branch` task per ticker (`train_ticker` unless given), called with the settings,
    the ticker and its `kwargs`; a branch's failure is reported, not propagated, except a
    tracking server that stopped answering: one :class:`tracking.ServerStopped` for all."""
    kwargs = kwargs or {}
    if len(tickers) == 1:
        t = tickers[0]
        try:
            return [branch.fn(settings, t, **kwargs.get(t, {}))]
        except tracking.ServerStopped as exc:
            raise _stopped([(t, exc)], [t], []) from None
        except PipelineError:
            raise
        except Exception as exc:
            log.error("training %s failed: %s: %s", t, type(exc).__name__, exc)
            return [TickerResult(ticker=t, error=f"{type(exc).__name__}: {exc}")]
    log.info("training %d tickers in parallel: %s", len(tickers), ", ".join(tickers))
    futures = [branch.submit(settings, t, **kwargs.get(t, {})) for t in tickers]
    results: list[TickerResult] = []
    stopped: list[tuple[str, tracking.ServerStopped]] = []  # the cut runs, first first
    for t, fut in zip(tickers, futures, strict=True):
        # the branches already running end soon: each one's next call to the server fails
        try:
            results.append(fut.result())
        except tracking.ServerStopped as exc:
            stopped.append((t, exc))
        except Exception as exc:
            results.append(TickerResult(ticker=t, error=f"{type(exc).__name__}: {exc}"))
    if stopped:
        # a server that stopped answering answers no other ticker: one line, not one each
        cut = {t for t, _ in stopped} | {r.ticker for r in results if r.error is not None}
        done = [r.ticker for r in results if r.error is None]
        raise _stopped(stopped, [t for t in tickers if t in cut], done) from None
    return results


def _stopped(
    stopped: list[tuple[str, tracking.ServerStopped]], cut: list[str], done: list[str]
) -> tracking.ServerStopped:
    """The first cut run's error said for the command: whose run it cut, which tickers are
    left untrained, what their runs left registered (a version not yet promoted, or nothing)
    and which were trained."""
    ticker, exc = stopped[0]
    registered = "; ".join(e.outcome for _, e in stopped if e.outcome)
    left = registered or "nothing was registered"
    if cut != [ticker]:
        left = f"{', '.join(cut)} not trained, " + (registered or "nothing was registered for them")
    if done:
        left += f" ({', '.join(done)} trained)"
    return tracking.ServerStopped(exc.uri, exc.reason, f"{ticker}'s run", left)


@flow(name="training", log_prints=False, flow_run_name="train")
def training_flow(
    settings: Settings | None = None,
    files: list[str] | None = None,
    ticker: str | None = None,
    tickers: list[str] | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> Summary:
    """Ingest (when files are given), then train, evaluate, log, register, promote."""
    settings = resolve_settings(settings, config_path, overrides)
    summary = Summary(settings)
    if files is None and not tickers:
        files = [str(settings.path(s)) for s in settings.data.sources]
        ticker = ticker or settings.data.ticker
    touched: list[str] = []
    read: dict[str, tuple[str, ...]] = {}  # the files each ticker's rows came from
    # All the files in one merge: a refused file (the store changed since the CLI checked
    # them, or no CLI checked them) leaves the store as it was, not with the files before it.
    ingested = tasks.ingest_cached(settings, files, ticker) if files else []
    for path, reports in zip(files or [], ingested, strict=True):
        for report in reports:
            summary.note(f"ingested {path}: {describe(report)}")
            if report.ticker not in touched:
                touched.append(report.ticker)
            read[report.ticker] = (*read.get(report.ticker, ()), path)
    store = PriceStore(settings.store_path)
    for line in store.gap_warnings([r for rs in ingested for r in rs], settings.data.calendar):
        log.warning(line)
    todo = list(tickers or []) or touched or ([ticker] if ticker else [])
    if not todo:
        raise PipelineError("nothing to train: give FILE(s) or --ticker")
    artifacts.name_run(run_name("train", settings, todo))
    kwargs = {t: {"read": read.get(t, ()), "read_as": ticker} for t in todo}
    summary.results = map_tickers(settings, todo, kwargs=kwargs)
    publish_results(settings, "training", summary.results)
    end_run(summary.render(notes=False))
    return summary
