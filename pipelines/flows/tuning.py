"""The `tuning` flow: a study per ticker, then the best configuration through the training
pipeline (retrained once, scored on the test part next to naive, registered, and put through
the same promotion gate as any challenger)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines import provenance, tasks, tracking, tuning
from pipelines.calendar import check_stored_days
from pipelines.config import Settings
from pipelines.flows.common import TickerResult, end_run, resolve_settings
from pipelines.flows.training import train_one
from pipelines.store import PriceStore, describe

log = logging.getLogger("pipelines")


@dataclass
class TunedTicker:
    study: tuning.StudyResult
    final: TickerResult | None = None
    # the version registered for the same best trial on the same data: not retrained again
    unchanged: str | None = None

    def render(self, settings: Settings) -> str:
        s = self.study
        counts = ", ".join(f"{v} {k}" for k, v in s.counts.items() if v)
        lines = [
            f"{s.ticker}: study {s.study_name} ({s.n_trials} trials: {counts}; "
            f"{s.trials_run} run now in {s.seconds:.0f} s{', resumed' if s.resumed else ''})",
        ]
        if not s.best_params:
            lines.append("  no trial completed: nothing to retrain")
            return "\n".join(lines)
        best = ", ".join(f"{k}={_fmt(v)}" for k, v in s.best_params.items())
        best_text, default_text = rmse_pair(s.best_value, s.default_value)
        default = (
            f" (default configuration {default_text})" if math.isfinite(s.default_value) else ""
        )
        lines.append(f"  best configuration: {best}")
        lines.append(f"  best validation RMSE {best_text}{default}")
        lines.append(keep_line(s.best_params))
        if self.unchanged is not None:
            lines.append(
                f"  not retrained: best trial #{s.best_trial} and the data are unchanged since "
                f"version {self.unchanged}, registered by the last tune"
            )
        if self.final is not None:
            lines.append("  retrained once with it:")
            lines.extend("  " + line for line in self.final.render(settings).splitlines())
        lines.append(f"  MLflow parent run {s.parent_run_id} (study storage {s.storage})")
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def rmse_pair(best: float, default: float) -> tuple[str, str]:
    """Both RMSEs as the trial lines print them (6 significant digits), with more digits only
    if two different values would otherwise read the same."""
    digits = 6
    while digits < 17 and best != default and f"{best:.{digits}g}" == f"{default:.{digits}g}":
        digits += 1
    return f"{best:.{digits}g}", f"{default:.{digits}g}"


def keep_line(params: dict[str, Any]) -> str:
    """Where retraining takes its configuration from, and what to copy to keep the best one:
    `retrain`, `serve` and `run` train mlflow.yaml's settings, not a study's."""
    sets = " ".join(f"--set {k}={v}" for k, v in params.items())
    return (
        "  retraining (retrain, serve, run) trains mlflow.yaml's configuration, not this one: "
        f"to keep it, set these keys in mlflow.yaml (or pass {sets})"
    )


@dataclass
class TuningSummary:
    settings: Settings
    results: list[TunedTicker] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.final is None or r.final.error is None for r in self.results)

    def render(self) -> str:
        out = [*self.notes, *(r.render(self.settings) for r in self.results)]
        if self.results:
            out.append(f"MLflow UI: {tracking.ui_command(self.settings)}")
        return "\n".join(out)


@task(name="study", cache_policy=NO_CACHE)
def study(
    settings: Settings,
    ticker: str,
    trials: int | None,
    timeout_minutes: float | None,
    workers: int | None,
) -> tuning.StudyResult:
    frame, manifest = tasks.load_prices(settings, ticker)
    check_stored_days(ticker, frame["date"], settings.data.calendar)  # as training does
    store = PriceStore(settings.store_path)
    return tuning.run_study(
        settings,
        ticker,
        frame,
        str(manifest.last_date),
        trials,
        timeout_minutes,
        workers,
        digest_through=lambda day: provenance.digest_through(store.read_table(ticker), day),
        data_digest=manifest.digest,
    )


def _registered_already(
    settings: Settings, store: PriceStore, ticker: str, found: tuning.StudyResult
) -> str | None:
    """The version the study's last `tune` registered, if it retrained the same best trial on
    the same data (retraining it again would register a duplicate); else None."""
    last = tracking.last_tuned_version(found.parent_run_id, settings.registry.name_for(ticker))
    manifest = store.manifest(ticker)
    if (
        last is not None
        and manifest is not None
        and last.tags.get(tracking.TAG_TUNED_TRIAL) == str(found.best_trial)
        and last.tags.get(tracking.TAG_DATA_DIGEST) == manifest.digest
    ):
        return last.version
    return None


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    tickers = p.get("tickers") or ["configured"]
    trials = p.get("trials")
    return f"tune {','.join(tickers)}" + (f" ({trials} trials)" if trials else "")


def _markdown(result: TunedTicker, settings: Settings) -> str:
    return "```\n" + result.render(settings) + "\n```"


@flow(name="tuning", flow_run_name=_run_name)
def tuning_flow(
    settings: Settings | None = None,
    tickers: list[str] | None = None,
    trials: int | None = None,
    timeout_minutes: float | None = None,
    workers: int | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> TuningSummary:
    """Search each ticker's configuration, retrain the best, register it, decide promotion."""
    from prefect.artifacts import create_markdown_artifact

    settings = resolve_settings(settings, config_path, overrides)
    summary = TuningSummary(settings)
    store = PriceStore(settings.store_path)
    if not tickers:
        ticker = settings.data.ticker
        if store.lacks(ticker):
            # A fresh project: the configured sources first, as `run` stores them (all or none).
            sources = settings.data.sources
            paths = [str(settings.path(s)) for s in sources]
            for source, reports in zip(
                sources, tasks.ingest_cached(settings, paths, ticker), strict=True
            ):
                for report in reports:
                    summary.notes.append(f"ingested {source}: {describe(report)}")
        tickers = [ticker] if ticker else store.tickers()
    for ticker in tickers:
        found = study(settings, ticker, trials, timeout_minutes, workers)
        result = TunedTicker(found)
        if found.best_params:
            result.unchanged = _registered_already(settings, store, ticker, found)
        if found.best_params and result.unchanged is None:
            tuned = tuning.best_settings(settings, found)
            try:
                result.final = train_one(tuned, ticker)
            except Exception as exc:
                log.error("retraining %s's best configuration failed: %s", ticker, exc)
                result.final = TickerResult(ticker=ticker, error=f"{type(exc).__name__}: {exc}")
            if result.final.run_id:
                tracking.link_tuned_run(
                    found.parent_run_id,
                    result.final.run_id,
                    settings.registry.name_for(ticker),
                    result.final.version,
                    found.best_trial,
                )
        summary.results.append(result)
        create_markdown_artifact(
            _markdown(result, settings),
            key=f"tuning-{ticker.lower()}".replace("_", "-").replace(".", "-"),
            description=f"Study {found.study_name}: best configuration and promotion decision",
        )
    end_run(summary.render())
    return summary
