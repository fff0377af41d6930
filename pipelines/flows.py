"""Prefect flows: training, retraining on new price files, and batch forecasts."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lstm_core.backtest import fold_bounds
from lstm_core.data import DataError
from lstm_core.predictor import Forecaster
from pipelines import artifacts, monitoring, promotion, tasks, tracking
from pipelines.config import Settings, load_settings
from pipelines.errors import FOLDS_ADVICE, PipelineError
from pipelines.fsio import atomic_write
from pipelines.runtime import quiet_tensorflow
from pipelines.store import PriceStore, describe

log = logging.getLogger("pipelines")


@dataclass
class TickerResult:
    ticker: str
    run_id: str | None = None
    version: str | None = None
    promoted: bool = False
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    error: str | None = None
    artifact_uri: str | None = None

    def render(self, settings: Settings) -> str:
        if self.error:
            return f"{self.ticker}: FAILED: {self.error}"
        m = self.metrics
        lines = [
            f"{self.ticker}: test RMSE {m.get('test_rmse', float('nan')):.4f} vs naive "
            f"{m.get('naive_rmse', float('nan')):.4f} (skill {m.get('skill_vs_naive', float('nan')):+.3f}, "
            f"MASE {m.get('mase', float('nan')):.3f}, DM p-value {m.get('dm_pvalue', float('nan')):.3f})",
            f"  registered {settings.registry.name_for(self.ticker)} version {self.version}: "
            f"{'CHAMPION' if self.promoted else 'not promoted'} ({self.reason})",
            f"  run {self.run_id}; plots: {', '.join(self.plots) or '-'}",
            f"  (artifacts under {self.artifact_uri})" if self.artifact_uri else "",
        ]
        return "\n".join(line for line in lines if line)


@dataclass
class Summary:
    settings: Settings
    results: list[TickerResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # incoming files that were bad input

    @property
    def ok(self) -> bool:
        return all(r.error is None for r in self.results)

    def render(self) -> str:
        out = [*self.notes, *(r.render(self.settings) for r in self.results)]
        if self.results:
            out.append(f"MLflow UI: {tracking.ui_command(self.settings)}")
        return "\n".join(out)


def _settings(
    settings: Settings | None, config_path: str | None, overrides: list[str] | None
) -> Settings:
    """Deployments pass a config path (JSON-able); the CLI passes validated settings."""
    return settings if settings is not None else load_settings(config_path, overrides or ())


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
) -> TickerResult:
    """The training pipeline for one ticker: store -> ... -> register -> promote.

    A promoted version forecasts at once, and that forecast goes to the forecast log.
    """
    quiet_tensorflow()  # in a served run or a Dask worker this is the first TF import
    frame, manifest = tasks.load_prices(settings, ticker)
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

    experiment_id = tracking.connect(settings)
    data_tags = {
        tracking.TAG_DATA_LAST_DATE: str(manifest.last_date),
        tracking.TAG_DATA_DIGEST: manifest.digest,
        tracking.TAG_DATA_ROWS: str(manifest.rows),
    }
    run_id = tracking.start_run(settings, experiment_id, ticker, {**data_tags, **(run_tags or {})})
    result = TickerResult(ticker=ticker, run_id=run_id)
    ok = False
    try:
        tracking.log_params(run_id, settings)
        tracking.log_dataset(
            run_id,
            frame,
            source=source or str(settings.store_path / f"ticker={ticker}"),
            digest=manifest.digest,
            name=f"{ticker} {manifest.first_date}..{manifest.last_date}",
        )
        trained = tasks.train(data, settings, run_id, ticker)
        ev = settings.evaluation
        log.info(
            "%s: evaluating on %d test days (%s intervals)",
            ticker,
            len(data.test),
            ev.intervals,
        )
        evaluation = tasks.evaluate(trained.model, data, settings)
        calibration = tasks.calibrate(trained.model, frames, preprocessor, settings)
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

        forecaster = Forecaster(trained.model, preprocessor, calibration)
        example = frame.tail(preprocessor.rows_needed).reset_index(drop=True)
        with tempfile.TemporaryDirectory(prefix="lstm-") as tmp:
            workdir = Path(tmp)
            log.info("%s: logging the model, registering, deciding promotion", ticker)
            model_uri = tasks.log_model(run_id, forecaster, example, workdir)
            registered = tasks.register(
                settings.registry.name_for(ticker),
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
        ok = True
    finally:
        tracking.end_run(run_id, ok)
    if result.promoted:
        try:
            forecast_one(settings, ticker, settings.evaluation.forecast_days)
        except Exception as exc:  # the promotion stands; the next forecast run logs instead
            log.warning("%s: the new champion's first forecast failed: %s", ticker, exc)
    return result


train_ticker = task(train_one, name="train-ticker", cache_policy=NO_CACHE)


def _task_runner(settings: Settings):
    """None (Prefect's default thread pool) or a DaskTaskRunner for `runtime.task_runner: dask`.

    Each ticker branch (`train_ticker`, which calls the other tasks inline) runs in one
    Dask worker process; a local cluster gets `runtime.dask_workers` single-threaded
    worker processes on 127.0.0.1, `runtime.dask_address` an existing scheduler instead.
    """
    if settings.runtime.task_runner != "dask":
        return None
    from prefect_dask import DaskTaskRunner

    if settings.runtime.dask_address:
        return DaskTaskRunner(address=settings.runtime.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.runtime.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "host": "127.0.0.1",
        }
    )


@contextmanager
def fan_out(settings: Settings, flow_obj: Any) -> Iterator[Any]:
    """Yield `flow_obj` ready to run with the configured task runner.

    With Dask the workers need a real Prefect API (without one each worker starts its own
    temporary server, ~12 s): PREFECT_API_URL (or `runtime.prefect_api_url`) if set, else a
    local `prefect server` started here under `<project>/.prefect/fanout-server` and stopped
    when the block ends. Wrap scripts that use it in `if __name__ == "__main__":`.
    """
    runner = _task_runner(settings)
    if runner is None:
        yield flow_obj
        return
    from pipelines.servers import prefect_api

    rt = settings.runtime
    if rt.dask_address:
        log.info("fan-out: tickers run on the Dask scheduler at %s", rt.dask_address)
    else:
        log.info("fan-out: starting a local Dask cluster of %d worker(s)", rt.dask_workers)
    if not (rt.prefect_api_url or os.environ.get("PREFECT_API_URL")):
        log.info("fan-out: starting a Prefect server for the workers (.prefect/fanout-server)")
    with prefect_api(settings.path(".prefect") / "fanout-server", settings.runtime.prefect_api_url):
        yield flow_obj.with_options(task_runner=runner)


def _map_tickers(
    settings: Settings, tickers: list[str], run_tags: dict[str, dict[str, str]] | None = None
) -> list[TickerResult]:
    """One branch per ticker; a branch's failure is reported, not propagated."""
    run_tags = run_tags or {}
    if len(tickers) == 1:
        try:
            return [train_one(settings, tickers[0], run_tags=run_tags.get(tickers[0]))]
        except PipelineError:
            raise
        except Exception as exc:
            log.error("training %s failed: %s: %s", tickers[0], type(exc).__name__, exc)
            return [TickerResult(ticker=tickers[0], error=f"{type(exc).__name__}: {exc}")]
    log.info("training %d tickers in parallel: %s", len(tickers), ", ".join(tickers))
    futures = [train_ticker.submit(settings, t, run_tags=run_tags.get(t)) for t in tickers]
    results = []
    for t, fut in zip(tickers, futures, strict=True):
        try:
            results.append(fut.result())
        except Exception as exc:
            results.append(TickerResult(ticker=t, error=f"{type(exc).__name__}: {exc}"))
    return results


def emit_updated(settings: Settings, ticker: str, added: int) -> None:
    from prefect.events import emit_event

    emit_event(
        event=settings.schedule.event,
        resource={"prefect.resource.id": f"lstm.ticker.{ticker}", "ticker": ticker},
        payload={"added": added},
    )


def _publish_results(settings: Settings, kind: str, results: list[TickerResult]) -> None:
    """A table artifact of the run's results and a link to each ticker's MLflow run."""
    rows = []
    for r in results:
        try:
            url = tracking.run_url(settings, r.run_id) if r.run_id else None
        except Exception:  # a link is a convenience: the results table still goes out
            url = None
        m = r.metrics
        rows.append(
            {
                "ticker": r.ticker,
                "version": r.version,
                "test_rmse": m.get("test_rmse"),
                "naive_rmse": m.get("naive_rmse"),
                "skill_vs_naive": m.get("skill_vs_naive"),
                "decision": "error" if r.error else ("promoted" if r.promoted else "refused"),
                "reason": r.error or r.reason,
                "mlflow": url,
            }
        )
        if url:
            artifacts.link(
                artifacts.artifact_key(kind, r.ticker, "mlflow"),
                url,
                f"{kind} {r.ticker} v{r.version}",
                "The MLflow run of this training",
            )
    artifacts.table(
        artifacts.artifact_key(kind, "results"),
        rows,
        f"{kind}: test RMSE against naive, version, promotion decision",
    )


def _run_name(kind: str, settings: Settings, tickers: list[str], word: str = "to") -> str:
    """`train MSFT to 2017-10-13`, `retrain 3 tickers`, `forecast MSFT from 2017-11-10`."""
    if len(tickers) != 1:
        return f"{kind} {len(tickers)} tickers"
    manifest = PriceStore(settings.store_path).manifest(tickers[0])
    return f"{kind} {tickers[0]}" + (f" {word} {manifest.last_date}" if manifest else "")


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
    settings = _settings(settings, config_path, overrides)
    summary = Summary(settings)
    if files is None and not tickers:
        files = [str(settings.path(s)) for s in settings.data.sources]
        ticker = ticker or settings.data.ticker
    touched: list[str] = []
    for path in files or []:
        for report in tasks.ingest_cached(settings, path, ticker):
            summary.notes.append(f"ingested {path}: {describe(report)}")
            if report.ticker not in touched:
                touched.append(report.ticker)
    todo = list(tickers or []) or touched or ([ticker] if ticker else [])
    if not todo:
        raise PipelineError("nothing to train: give FILE(s) or --ticker")
    artifacts.name_run(_run_name("train", settings, todo))
    summary.results = _map_tickers(settings, todo)
    _publish_results(settings, "training", summary.results)
    return summary


def _move(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    dst = folder / f"{src.stem}.{stamp}{src.suffix}"
    shutil.move(str(src), dst)
    return dst


def needs_training(settings: Settings, ticker: str) -> tuple[bool, str]:
    """Has the ticker gained enough rows since its champion was trained?

    A version already trained on exactly the stored data (promoted or refused) means there
    is nothing new to learn from, so a refused challenger is not retrained again and again.
    """
    manifest = PriceStore(settings.store_path).manifest(ticker)
    if manifest is None:
        return False, "no data"
    name = settings.registry.name_for(ticker)
    known = tracking.versions(name) if tracking.registered_model_exists(name) else []
    if not known:
        return True, "no model yet"
    latest = known[-1]
    if latest.tags.get(tracking.TAG_DATA_DIGEST) == manifest.digest:
        return False, f"unchanged since v{latest.version} was trained"
    basis = tracking.champion(name, settings.registry.alias) or latest
    trained_rows = int(basis.tags.get(tracking.TAG_DATA_ROWS, "0") or 0)
    gained = manifest.rows - trained_rows
    since = f"v{basis.version} ({basis.tags.get(tracking.TAG_DATA_LAST_DATE)})"
    if gained < settings.data.min_new_rows:
        return False, f"gained {gained} row(s) since {since}, need {settings.data.min_new_rows}"
    return True, f"gained {gained} row(s) since {since}"


@flow(name="retraining", flow_run_name="retrain")
def retraining_flow(
    settings: Settings | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    trigger: str = "manual",
) -> Summary:
    """Ingest new files from the incoming folder, score the live forecasts, then retrain
    the tickers whose data changed or whose champion has degraded.

    `trigger` (cron | new_data | degraded | manual) is what started the run; each retrained
    ticker's MLflow run records it and its own reason (new_data | degraded) with the figures.
    """
    settings = _settings(settings, config_path, overrides)
    summary = Summary(settings)
    incoming = settings.path(settings.data.incoming)
    files = sorted(p for p in incoming.glob("*.csv") if p.is_file()) if incoming.is_dir() else []
    for path in files:
        try:
            reports = tasks.ingest_cached(settings, str(path), None)
        except PipelineError as exc:
            dst = _move(path, settings.path(settings.data.rejected))
            dst.with_name(dst.name + ".error.txt").write_text(f"{exc}\n", encoding="utf-8")
            summary.notes.append(f"rejected {path.name}: {exc}")
            summary.rejected.append(path.name)
            continue
        # Only once the rows are safely in the store does the file leave the incoming folder.
        _move(path, settings.path(settings.data.archive))
        summary.notes.extend(f"ingested {path.name}: {describe(r)}" for r in reports)
    # The champion already decays: the scoring below decides on it, so no event is emitted.
    live = monitoring.score_all(settings, emit=False)
    todo: list[str] = []
    tags: dict[str, dict[str, str]] = {}
    for ticker in PriceStore(settings.store_path).tickers():
        stale, why = needs_training(settings, ticker)
        score = live.get(ticker)
        reason = "new_data"
        if not stale and score is not None and score.verdict.degraded:
            if why.startswith("unchanged since"):
                why = f"degraded, but {why}"
            else:
                stale, reason = True, "degraded"
                why = "champion degraded: " + "; ".join(score.verdict.reasons)
        summary.notes.append(f"{ticker}: {'retrain' if stale else 'skip'} ({why})")
        if stale:
            todo.append(ticker)
            tags[ticker] = {
                "retrain.trigger": trigger,
                "retrain.reason": reason,
                "retrain.detail": why[:5000],
            }
    if not todo:
        summary.notes.append("nothing changed: no ticker to retrain")
        artifacts.name_run("retrain: nothing to do")
        return summary
    artifacts.name_run(_run_name("retrain", settings, todo))
    summary.results = _map_tickers(settings, todo, tags)
    _publish_results(settings, "retraining", summary.results)
    return summary


@dataclass
class ForecastResult:
    """Per ticker: a forecast (frame, path), an unexpected error, or a refused request
    (no champion, more days than the intervals cover: the user's to fix, exit code 2)."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.refused

    def render(self) -> str:
        out = []
        for t, frame in self.frames.items():
            out.append(f"{t}: forecast written to {self.paths[t]}")
            out.append(frame.to_string(index=False))
        out.extend(f"{t}: FAILED: {e}" for t, e in self.errors.items())
        return "\n".join(out)


def forecast_one(settings: Settings, ticker: str, days: int) -> tuple[pd.DataFrame, Path]:
    """The champion's next `days` trading days: the latest file, plus rows in the log."""
    from mlflow.exceptions import MlflowException

    quiet_tensorflow()
    name = settings.registry.name_for(ticker)
    tracking.connect(settings)
    version = _champion(settings, ticker)
    model = tracking.load_model(name, settings.registry.alias)
    history = PriceStore(settings.store_path).load(ticker)
    inputs = model.metadata.get_input_schema().input_names()  # the columns the model reads
    # recalibrate: the conformal band also learns from the days since the model's validation
    params = {"days": days, "intervals": True, "recalibrate": True}
    try:
        frame = model.predict(history[inputs], params=params)
    except MlflowException as exc:
        if exc.error_code != "INVALID_PARAMETER_VALUE":
            raise
        # the model refuses the request (lstm_core's DataError): the user's to fix
        raise PipelineError(f"{name} v{version.version}: {exc.message}") from None
    frame.insert(0, "ticker", ticker)
    frame["model_version"] = version.version
    out_dir = settings.path(settings.data.forecasts)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{ticker}.parquet"
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    tracking.log_forecast(settings, ticker, version.version, path)
    made_on = history["date"].iloc[-1]
    monitoring.log_forecast(settings, ticker, frame, made_on, version)
    return frame, path


def _champion(settings: Settings, ticker: str) -> tracking.RegisteredVersion:
    """The ticker's champion, or a PipelineError saying how to get one: train, or promote
    the latest version when versions exist that were refused."""
    name, alias = settings.registry.name_for(ticker), settings.registry.alias
    version = tracking.champion(name, alias)
    if version is not None:
        return version
    known = tracking.versions(name) if tracking.registered_model_exists(name) else []
    if not known:
        raise PipelineError(
            f"{name} has no registered version yet, so no {alias!r}: train one first with: "
            f"lstm-pipeline run --ticker {ticker}"
        )
    latest = known[-1]
    why = latest.tags.get(tracking.TAG_REASON, "")  # "refused: ..." when the gate refused it
    refused = latest.tags.get(tracking.TAG_PROMOTED) == "false" and why
    raise PipelineError(
        f"{name} has no {alias!r} alias: its latest version, v{latest.version}, is not "
        f"champion{f' ({why})' if refused else ''}; to forecast with it anyway: lstm-pipeline "
        f"promote --ticker {ticker} --version {latest.version}"
    )


# A PipelineError (no champion, more days than the bands cover) is not retried, and Prefect's
# ERROR record of it is dropped (runtime's filter): the flow reports it as a refusal.
forecast_ticker = task(
    forecast_one, name="forecast-ticker", cache_policy=NO_CACHE, **tasks.IO_RETRY
)


@flow(name="forecast", flow_run_name="forecast")
def forecast_flow(
    settings: Settings | None = None,
    tickers: list[str] | None = None,
    days: int | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> ForecastResult:
    """Next N trading days with intervals from each ticker's champion, written to Parquet."""
    settings = _settings(settings, config_path, overrides)
    days = settings.evaluation.forecast_days if days is None else days
    tickers = tickers or PriceStore(settings.store_path).tickers()
    result = ForecastResult()
    artifacts.name_run(_run_name("forecast", settings, tickers, "from"))
    futures = {t: forecast_ticker.submit(settings, t, days) for t in tickers}
    for t, fut in futures.items():
        try:
            result.frames[t], result.paths[t] = fut.result()
        except PipelineError as exc:  # the user's to fix
            result.refused[t] = str(exc)
        except Exception as exc:
            result.errors[t] = str(exc)
    # A served run's refusals show in its results table (the CLI prints them on stderr).
    rows = [{"ticker": t, "outcome": "written", "detail": str(p)} for t, p in result.paths.items()]
    rows += [{"ticker": t, "outcome": "refused", "detail": m} for t, m in result.refused.items()]
    rows += [{"ticker": t, "outcome": "error", "detail": m} for t, m in result.errors.items()]
    artifacts.table(
        artifacts.artifact_key("forecast", "results"), rows, "forecast: written, refused, error"
    )
    return result
