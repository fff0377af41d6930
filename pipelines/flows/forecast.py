"""The forecast flow: each champion's next trading days with intervals, to Parquet and the
forecast log."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines import artifacts, monitoring, provenance, tasks, tracking
from pipelines.config import Settings
from pipelines.errors import PipelineError
from pipelines.flows.common import end_run, resolve_settings, run_name
from pipelines.fsio import atomic_write
from pipelines.runtime import quiet_tensorflow
from pipelines.store import PriceStore, as_frame

log = logging.getLogger("pipelines")

# Bookkeeping columns of a forecast (the log's) left out of the printed table: the line
# above it names the model, version and day.
_NOT_SHOWN = ("ticker", "model_name", "version", "run_id", "made_on", "target", "logged_at")


@dataclass
class ForecastResult:
    """Per ticker: a forecast (frame, path), an unexpected error, or a refused request
    (no champion, one not trained on this project's prices, more days than the intervals
    cover: the user's to fix, exit code 2)."""

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
            first = frame.iloc[0]
            out.append(
                f"{t}: forecast written to {self.paths[t]} ({first['model_name']} "
                f"v{first['version']}, made on {first['made_on']})"
            )
            shown = [c for c in frame.columns if c not in _NOT_SHOWN]
            out.append(frame[shown].to_string(index=False))
        out.extend(f"{t}: FAILED: {e}" for t, e in self.errors.items())
        return "\n".join(out)

    def refusals(self) -> list[str]:
        """Each refused ticker with why (the CLI's error line joins them)."""
        return [f"{t}: {m}" for t, m in self.refused.items()]


def forecast_one(settings: Settings, ticker: str, days: int) -> tuple[pd.DataFrame, Path]:
    """The champion's next `days` trading days: the latest file, plus rows in the log."""
    quiet_tensorflow()
    name = settings.registry.name_for(ticker)
    tracking.connect(settings)
    version = _champion(settings, ticker)
    table = PriceStore(settings.store_path).read_table(ticker)
    # another project's champion of the same name (other prices), or another calendar's
    mismatch = provenance.not_trained_here(settings, ticker, version, lambda: table)
    if mismatch:
        raise PipelineError(mismatch[1])
    model = tracking.load_model(name, settings.registry.alias)
    history = as_frame(table)
    inputs = model.metadata.get_input_schema().input_names()  # the columns the model reads
    # recalibrate: the conformal band also learns from the days since the model's validation
    wanted = {"days": days, "intervals": True, "recalibrate": True}
    takes = tracking.param_names(model)  # a model logged by an older version may take fewer
    params = {k: v for k, v in wanted.items() if k in takes}
    if "recalibrate" not in takes:
        log.info(
            "%s: %s v%s predates re-calibrated bands: its bands are its run's own "
            "(retrain for re-calibrated ones)",
            ticker,
            name,
            version.version,
        )
    frame = tracking.predict(model, history[inputs], params, f"{name} v{version.version}")
    rows = monitoring.forecast_rows(settings, frame, history["date"].iloc[-1], version)
    # the latest forecast: the log's columns, its ticker last as readers of the log's hive
    # folders (pandas, pyarrow, DuckDB) put it, so the two concatenate
    latest = rows.assign(ticker=ticker)
    out_dir = settings.path(settings.data.forecasts)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{ticker}.parquet"
    atomic_write(path, lambda tmp: latest.to_parquet(tmp, index=False))
    tracking.log_forecast(settings, ticker, version.version, path)
    monitoring.log_forecast(settings, ticker, rows)
    return latest, path


def first_forecast(settings: Settings, ticker: str) -> tuple[pd.DataFrame, Path] | None:
    """A new champion's first forecast (promoted by a run or by hand): None, with a warning,
    when it fails; the promotion stands and the next forecast run tries again."""
    try:
        return forecast_one(settings, ticker, settings.evaluation.forecast_days)
    except Exception as exc:
        log.warning("%s: the new champion's first forecast failed: %s", ticker, exc)
        return None


def _champion(settings: Settings, ticker: str) -> tracking.RegisteredVersion:
    """The ticker's champion, or a PipelineError saying how to get one: train, or promote
    the latest version when versions exist that were refused."""
    name, alias = settings.registry.name_for(ticker), settings.registry.alias
    version = tracking.champion(name, alias)
    if version is not None:
        return version
    known = tracking.versions(name) if tracking.registered_model_exists(name) else []
    if not known:
        hint = PriceStore(settings.store_path).other_case(ticker)
        raise PipelineError(
            f"{name} has no registered version yet, so no {alias!r}: "
            + (hint or f"train one first with: lstm-pipeline run --ticker {ticker}")
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
    settings = resolve_settings(settings, config_path, overrides)
    days = settings.evaluation.forecast_days if days is None else days
    tickers = tickers or PriceStore(settings.store_path).tickers()
    result = ForecastResult()
    artifacts.name_run(run_name("forecast", settings, tickers, "from"))
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
    end_run("\n".join(filter(None, [result.render(), *result.refusals()])))
    return result
