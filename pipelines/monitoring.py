"""Live monitoring: log the champion's forecasts, score them as prices arrive, report, alert.

- :func:`forecast_rows` and :func:`log_forecast` append a forecast to the forecast log
  (pipelines.forecast_log).
- :func:`score` matches a ticker's logged forecasts to the stored prices and computes, per
  version, the live figures over the rolling window and since the version became champion.
- :func:`score_ticker` (a task; also run at the start of retraining) records the champion's
  figures in MLflow (run `live <T> v<N>`, version tags `live.*`), in a Prefect table artifact
  `live-<t>`, and emits `monitoring.event` (model.degraded) when the champion has decayed.
- :func:`status` is the table of `lstm-pipeline status`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lstm_core import scoring
from pipelines import artifacts, promotion, provenance, tracking
from pipelines.calendar import first_missing_session
from pipelines.config import Settings
from pipelines.forecast_log import ForecastLog, rows_from_forecast
from pipelines.fsio import file_lock
from pipelines.store import PriceStore, as_frame

log = logging.getLogger("pipelines")

TAG_DEGRADED_EVENT = "live.degraded_event_through"


def forecast_log(settings: Settings) -> ForecastLog:
    return ForecastLog(settings.path(settings.data.forecasts) / "log", settings.path(".locks"))


def forecast_rows(
    settings: Settings, frame: pd.DataFrame, made_on: Any, version: tracking.RegisteredVersion
) -> pd.DataFrame:
    """A champion's forecast frame as forecast-log rows (the log's columns)."""
    return rows_from_forecast(
        frame,
        made_on=made_on,
        model_name=version.name,
        version=version.version,
        run_id=version.run_id,
        target=settings.features.target,
    )


def log_forecast(settings: Settings, ticker: str, rows: pd.DataFrame) -> int:
    """Append `forecast_rows` to the log; returns the rows added (0: known)."""
    return forecast_log(settings).append(ticker, rows)


@dataclass
class LiveScore:
    """A ticker's live figures: per version, the window and since-champion metrics."""

    ticker: str
    champion: str | None
    scored_through: str | None  # the last target date scored
    pending: int  # champion forecasts whose target has not arrived
    # champion forecasts never scored: a day up to their target is missing from the store
    not_scored: int = 0
    first_missing: str | None = None  # the first such day (ISO), when the calendar names it
    window: dict[str, scoring.LiveMetrics] = field(default_factory=dict)
    since: dict[str, scoring.LiveMetrics] = field(default_factory=dict)
    verdict: scoring.Verdict = scoring.Verdict(False, ())
    matched: pd.DataFrame | None = None
    run_id: str | None = None
    event: bool = False

    def row(self) -> dict[str, Any]:
        """The champion's figures as one flat row (artifact, JSON)."""
        v = self.champion
        w = self.window.get(v) if v else None
        s = self.since.get(v) if v else None
        out: dict[str, Any] = {"ticker": self.ticker, "version": v}
        out["scored_through"] = self.scored_through
        out["pending"] = self.pending
        out["not_scored"] = self.not_scored
        if w is not None:
            out.update(w.as_dict("window_"))
        if s is not None:
            out.update(s.as_dict("since_champion_"))
        out["degraded"] = self.verdict.degraded
        out["why"] = "; ".join(self.verdict.reasons)
        return out

    def render(self) -> str:
        """The ticker's line of a scoring run's summary (in the run's Prefect logs)."""
        if self.champion is None:
            return f"{self.ticker}: no champion to score"
        w = self.window.get(self.champion)
        line = f"{self.ticker}: champion v{self.champion} "
        if w is None or not w.n:
            line += "has no forecast scored yet"
        else:
            line += (
                f"scored through {self.scored_through}: live RMSE {w.rmse:.4f} vs naive "
                f"{w.naive_rmse:.4f} over {w.days} day(s)"
            )
        line += f", {self.pending} pending"
        if self.not_scored:
            line += f", {self.not_scored} never scored (a day up to the target not stored)"
        return line + (
            f"; DEGRADED: {'; '.join(self.verdict.reasons)}" if self.verdict.degraded else ""
        )


def score(
    settings: Settings, ticker: str, champion: str | None, table: pa.Table | None = None
) -> LiveScore:
    """Match the ticker's log to its stored prices; figures per version (no side effects).

    `table`: the ticker's stored rows when the caller has read them already (status)."""
    logged = forecast_log(settings).read(ticker)
    result = LiveScore(ticker, champion, None, 0)
    if logged.empty:
        return result
    if table is None:
        store = PriceStore(settings.store_path)
        if store.manifest(ticker) is None:  # no prices
            return result
        table = store.read_table(ticker)
    prices = as_frame(table)
    name = settings.registry.name_for(ticker)
    logged = logged[logged["model_name"] == name]
    # With an exchange calendar the logged expected dates are its sessions: a forecast whose
    # day is missing from the store is left unscored rather than scored on a later day.
    dated = settings.data.calendar is not None
    parts = []
    for target, part in logged.groupby("target", sort=False):
        if target in prices.columns:
            parts.append(scoring.match(part, prices, str(target), dated=dated))
    if not parts:
        return result
    matched = pd.concat(parts, ignore_index=True)
    result.matched = matched
    done = matched[matched["scored"]]
    if not done.empty:
        result.scored_through = str(done["target_date"].max().date())
    mon = settings.monitoring
    for version, part in matched.groupby("version", sort=False):
        levels = scoring.levels_of(part.dropna(axis=1, how="all"))
        result.since[version] = scoring.metrics(part, levels)
        result.window[version] = scoring.metrics(scoring.window(part, mon.window_days), levels)
    if champion is not None:
        own = matched[matched["version"] == champion]
        result.not_scored = int(own["gap"].sum())
        if result.not_scored:
            # a day up to the target of the earliest made of them: its own, or one before it
            result.first_missing = first_missing_session(
                settings.data.calendar, prices["date"], own.loc[own["gap"], "made_on"].min()
            )
        result.pending = int((~own["scored"] & ~own["gap"]).sum())
        if champion in result.window:
            result.verdict = scoring.verdict(
                result.window[champion], mon.min_days, mon.max_live_ratio, mon.coverage_tolerance
            )
    return result


def _record(settings: Settings, result: LiveScore) -> None:
    """The champion's figures to MLflow: monitoring run series, plot, version tags."""
    from lstm_core.plots import plot_live

    ticker, version = result.ticker, result.champion
    own = result.matched[result.matched["version"] == version]
    if own.empty or not own["scored"].any():
        return
    prices = PriceStore(settings.store_path).load(ticker)
    dates = pd.to_datetime(prices["date"]).to_numpy()
    first_made = pd.Timestamp(own["made_on"].min()).to_datetime64()
    origin = int(dates.searchsorted(first_made, side="right")) - 1
    run_id = tracking.monitoring_run(settings, ticker, version)
    result.run_id = run_id
    tracking.log_live_series(run_id, scoring.series(own, settings.monitoring.window_days, origin))
    target = str(own["target"].iloc[0])
    fig = plot_live(own, prices, ticker, target)
    tracking.log_figures(run_id, {"live_forecasts": fig})
    # Finished after each scoring (the next one logs to it again): not left "Running".
    tracking.end_run(run_id, True)
    name = settings.registry.name_for(ticker)
    figures = result.window[version].as_dict()
    tracking.tag_live(name, version, figures, result.scored_through or "")


def _emit_degraded(settings: Settings, result: LiveScore) -> bool:
    """Emit monitoring.event once per champion and scored-through date."""
    from prefect.events import emit_event

    name = settings.registry.name_for(result.ticker)
    tags = tracking.get_version(name, result.champion).tags
    if tags.get(TAG_DEGRADED_EVENT) == result.scored_through:
        return False
    w = result.window[result.champion]
    emit_event(
        event=settings.monitoring.event,
        resource={
            "prefect.resource.id": f"lstm.ticker.{result.ticker}",
            "ticker": result.ticker,
            "version": result.champion,
        },
        payload={
            "reasons": list(result.verdict.reasons),
            "scored_through": result.scored_through,
            **{k: v for k, v in w.as_dict().items() if not math.isnan(v)},
        },
    )
    tracking.tag_version(name, result.champion, {TAG_DEGRADED_EVENT: result.scored_through})
    return True


def score_one(settings: Settings, ticker: str, emit: bool = True) -> LiveScore:
    """Score, record in MLflow and Prefect, and alert when the champion has decayed.

    One scoring of a ticker at a time (a file lock): two at once (two retrainings, or one
    beside the scoring flow) would both make the champion's monitoring run and first `live.*`
    tags, and MLflow's SQL store inserts a tag after finding none, so the later insert failed
    ("UNIQUE constraint failed: model_version_tags"). The waiting one scores after, again.
    """
    tracking.connect(settings)
    name = settings.registry.name_for(ticker)
    lock = settings.path(".locks") / f"live-{name}.lock"
    with file_lock(lock, waiting=f"{ticker}: waiting for another scoring of {ticker}"):
        return _score_and_record(settings, ticker, name, emit)


def _score_and_record(settings: Settings, ticker: str, name: str, emit: bool) -> LiveScore:
    current = tracking.champion(name, settings.registry.alias)
    result = score(settings, ticker, current.version if current else None)
    if current is None or result.matched is None:
        return result
    _record(settings, result)
    key = artifacts.artifact_key("live", ticker)
    artifacts.table(key, [result.row()], f"{ticker} live figures of champion v{current.version}")
    if result.run_id:
        artifacts.link(
            artifacts.artifact_key("live", ticker, "mlflow"),
            tracking.run_url(settings, result.run_id),
            f"live {ticker} v{current.version}",
            "The MLflow monitoring run (live metrics by trading day, forecasts vs prices)",
        )
    if result.verdict.degraded:
        log.warning(
            "%s champion v%s degraded: %s",
            ticker,
            current.version,
            "; ".join(result.verdict.reasons),
        )
        if emit:
            result.event = _emit_degraded(settings, result)
    return result


score_ticker = task(score_one, name="score-ticker", cache_policy=NO_CACHE)


def score_all(settings: Settings, tickers: list[str] | None = None, emit: bool = True):
    tickers = forecast_log(settings).tickers() if tickers is None else tickers
    return {t: score_ticker(settings, t, emit) for t in tickers}


@flow(name="scoring", flow_run_name="score")
def scoring_flow(
    settings: Settings | None = None,
    tickers: list[str] | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, LiveScore]:
    """Score every ticker's logged forecasts against the prices that have arrived."""
    from pipelines.flows import resolve_settings
    from pipelines.flows.common import end_run

    settings = resolve_settings(settings, config_path, overrides)
    results = score_all(settings, tickers)
    through = max((r.scored_through for r in results.values() if r.scored_through), default=None)
    artifacts.name_run(f"score {through or 'nothing due'}")
    end_run("\n".join(r.render() for r in results.values()) or "no forecast logged to score")
    return results


# ---------------------------------------------------------------- status


def next_cron(settings: Settings, now: dt.datetime | None = None) -> str:
    """The next time the scheduled retraining fires (cron in its timezone)."""
    from cronsim import CronSim

    tz = ZoneInfo(settings.schedule.timezone)
    start = (now or dt.datetime.now(tz)).astimezone(tz)
    return next(CronSim(settings.schedule.cron, start)).strftime("%Y-%m-%d %H:%M %Z")


def status(settings: Settings, tickers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per stored ticker (or per one of `tickers`): champion, data dates, pending,
    live figures, decisions."""
    store = PriceStore(settings.store_path)
    readable = tracking.connect_to_read(settings)  # no MLflow data yet: every ticker untrained
    upcoming = next_cron(settings)
    rows = []
    logged = set(forecast_log(settings).tickers())
    for ticker in sorted(set(store.tickers()) | logged if tickers is None else set(tickers)):
        name = settings.registry.name_for(ticker)
        manifest = store.manifest(ticker)
        known = (
            tracking.versions(name) if readable and tracking.registered_model_exists(name) else []
        )
        current = tracking.champion(name, settings.registry.alias) if known else None
        # one read of the stored rows, for the scoring and the provenance check both
        needed = manifest is not None and (current is not None or ticker in logged)
        table = store.read_table(ticker) if needed else None
        result = score(settings, ticker, current.version if current else None, table)
        w = result.window.get(current.version) if current else None
        mismatch = None  # (state, why): a champion forecast refuses, see provenance
        if current is not None and table is not None:
            mismatch = provenance.not_trained_here(settings, ticker, current, lambda t=table: t)
        row: dict[str, Any] = {
            "ticker": ticker,
            "trained": bool(known),
            "champion": f"v{current.version}" if current else None,
            "champion_since": (current.tags.get("champion.since") if current else None),
            "trained_through": current.tags.get(tracking.TAG_DATA_LAST_DATE) if current else None,
            "store_last_date": str(manifest.last_date) if manifest else None,
            "pending": result.pending,
            "not_scored": result.not_scored,
            "first_missing_day": result.first_missing,
            "scored_days": w.days if w else 0,
            "live_rmse": w.rmse if w else None,
            "naive_rmse": w.naive_rmse if w else None,
            "skill_vs_naive": w.skill_vs_naive if w else None,
            "coverage": dict(w.coverage) if w else {},
            "degraded": result.verdict.degraded,
            "mismatch": mismatch[0] if mismatch else None,
            "mismatch_reason": mismatch[1] if mismatch else None,
            # this project's: another project's refusals are not its to read
            "last_decision": promotion.last_decision(provenance.not_others(settings, known)),
            "next_retraining": upcoming,
        }
        rows.append({k: _plain(v) for k, v in row.items()})
    return rows


def _plain(value: Any) -> Any:
    """NaN becomes None (valid JSON), nested dicts alike."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _state(row: dict[str, Any]) -> str:
    """The status table's word for a ticker's model: DEGRADED, FOREIGN (another project's)
    and CALENDAR (on another exchange calendar) call for action; untrained: no
    version yet; no champion: versions, none promoted."""
    if row.get("mismatch"):
        return row["mismatch"]
    if row["degraded"]:
        return "DEGRADED"
    if row["champion"]:
        return "ok"
    return "no champion" if row.get("trained") else "untrained"


def render_status(rows: list[dict[str, Any]], window_days: int) -> str:
    """A plain-text table, one line per ticker."""

    def num(v: Any, fmt: str = ".4f") -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    table = []
    for r in rows:
        cov = " ".join(f"{k}%:{num(v, '.2f')}" for k, v in r["coverage"].items()) or "-"
        since = (r["champion_since"] or "-")[:10]
        champion = f"{r['champion']} since {since}" if r["champion"] else "-"
        table.append(
            {
                "ticker": r["ticker"],
                "champion": champion,
                "trained to": r["trained_through"] or "-",
                "store to": r["store_last_date"] or "-",
                "pending": str(r["pending"]),
                f"live RMSE / naive ({window_days}d)": (
                    f"{num(r['live_rmse'])} / {num(r['naive_rmse'])} ({r['scored_days']}d)"
                ),
                "coverage": cov,
                "state": _state(r),
                "next retraining": r["next_retraining"],
            }
        )
    if not table:
        return "no tickers in the store yet"
    frame = pd.DataFrame(table)
    # Padded by display width: a CJK ticker (平安银行) takes two terminal columns a character
    # (East Asian width W or F; ambiguous ones count one, as most terminals show them).
    with pd.option_context(
        "display.unicode.east_asian_width", True, "display.unicode.ambiguous_as_wide", False
    ):
        lines = [frame.to_string(index=False)]
    lines += [_not_scored_line(r) for r in rows if r.get("not_scored")]
    lines += [f"{r['ticker']}: {r['mismatch_reason']}" for r in rows if r.get("mismatch")]
    lines += [
        f"{r['ticker']} last decision: {r['last_decision']}" for r in rows if r["last_decision"]
    ]
    return "\n".join(lines)


def _not_scored_line(row: dict[str, Any]) -> str:
    # a forecast's own day may be stored: an earlier missing day shifts the stored positions
    n, first = row["not_scored"], row.get("first_missing_day")
    return (
        f"{row['ticker']}: {n} forecast{'s' if n != 1 else ''} not scored: a day up to "
        f"{'their' if n != 1 else 'its'} target is missing from the store"
        + (f" ({first})" if first else "")
    )
