"""What the flows share: their results, settings resolution, run names and results tables."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler

from pipelines import artifacts, tracking
from pipelines.config import Settings, load_settings
from pipelines.store import PriceStore

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
    skipped: str | None = None  # why a retraining found it trained meanwhile (not a result)

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

    def note(self, text: str) -> None:
        """A line of the summary, also logged as progress now: the summary is printed when the
        run ends, and a log (`retrain > log 2>&1`) must say why before the training it starts.
        Where stdout and stderr are one place, the CLI prints the summary without its notes."""
        log.info("%s", text)
        self.notes.append(text)

    def render(self, notes: bool = True) -> str:
        """The notes (unless the reader has seen them already, as progress) and the results."""
        out = [*(self.notes if notes else ()), *(r.render(self.settings) for r in self.results)]
        if any(r.run_id for r in self.results):  # a run to look at
            out.append(f"MLflow UI: {tracking.ui_command(self.settings)}")
        return "\n".join(out)


def resolve_settings(
    settings: Settings | None, config_path: str | None, overrides: list[str] | None
) -> Settings:
    """Deployments pass a config path (JSON-able); the CLI passes validated settings.

    Every flow run of ours calls it first: from here its lines go to its Prefect logs too."""
    _run_logs_to_prefect()
    if settings is not None:
        return settings
    if _served():
        _served_run_console()
    return load_settings(config_path, overrides or ())


def _served() -> bool:
    """Is this process a flow run that Prefect's runner (`serve`) or a worker started? It
    marks that process with PREFECT__FLOW_RUN_ID."""
    return bool(os.environ.get("PREFECT__FLOW_RUN_ID"))


class _RunLogs(APILogHandler):
    """Prefect's handler of a flow run's logs (its Logs tab in the UI), on the `pipelines`
    logger. A line logged outside the run's context (a thread of our own, a Dask worker's
    forwarded line) has no run to go to: it stays on the console, without the warning
    Prefect gives it."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], MissingContextError):
            return
        super().handleError(record)


def _run_logs_to_prefect() -> None:
    """Send the `pipelines` lines of a flow run to its Prefect logs (the run's Logs tab in
    the UI), whoever started it (`serve`, a worker, the command line, cron). Prefect sends
    only its own run loggers to the API: this is its API handler (what
    PREFECT_LOGGING_EXTRA_LOGGERS=pipelines attaches when Prefect is imported, attached here
    so that no run needs a setting)."""
    if not any(isinstance(h, APILogHandler) for h in log.handlers):
        log.addHandler(_RunLogs())


def _served_run_console() -> None:
    """Show a served run on the console of the process that serves it (`serve`, a worker).

    Prefect's runner starts each flow run in a process of its own (which it marks with
    PREFECT__FLOW_RUN_ID) and copies that process's output to its own. No CLI set that
    process up: the run's progress lines had no handler, and the environment it inherits
    from the CLI (PREFECT_LOGGING_LEVEL=WARNING) dropped Prefect's line of the run's final
    state, so `serve` showed nothing of the runs it executed. Here they get the CLI's
    progress handler, a line when the run starts, and Prefect's "Finished in state ..." line.
    """
    from prefect.runtime import flow_run

    from pipelines.runtime import progress_logging

    progress_logging()
    logging.getLogger("prefect.flow_runs").setLevel(logging.INFO)
    log.info("flow run %r of flow %r started (%s)", flow_run.name, flow_run.flow_name, flow_run.id)


def end_run(summary: str) -> None:
    """A flow run ends as the CLI's command does, with its summary (as the CLI renders it,
    without the notes already logged), in the run's Prefect logs, and a served run's on the
    serving console too. Outside a served run the caller prints it: here it goes to Prefect
    only."""
    served = _served()
    for line in summary.splitlines():
        if served:
            log.info("%s", line)
            continue
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", (line,), None)
        for handler in log.handlers:
            if isinstance(handler, APILogHandler):
                handler.handle(record)


def emit_updated(settings: Settings, gained: dict[str, int]) -> None:
    """Send `schedule.event` for each ticker (rows added or replaced) to the Prefect API and
    return once sent. Not `emit_event`: it queues events for a background worker, which,
    when the process ends right after, warns "Still processing items" on stderr."""
    import asyncio

    from prefect.events import Event, get_events_client

    events = [
        Event(
            event=settings.schedule.event,
            resource={"prefect.resource.id": f"lstm.ticker.{ticker}", "ticker": ticker},
            payload={"added": added},
        )
        for ticker, added in gained.items()
    ]

    async def send() -> None:
        async with get_events_client(reconnection_attempts=2) as client:
            for event in events:
                await client.emit(event)

    asyncio.run(send())


def publish_results(settings: Settings, kind: str, results: list[TickerResult]) -> None:
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


def run_name(kind: str, settings: Settings, tickers: list[str], word: str = "to") -> str:
    """`train MSFT to 2017-10-13`, `retrain 3 tickers`, `forecast MSFT from 2017-11-10`."""
    if len(tickers) != 1:
        return f"{kind} {len(tickers)} tickers"
    manifest = PriceStore(settings.store_path).manifest(tickers[0])
    return f"{kind} {tickers[0]}" + (f" {word} {manifest.last_date}" if manifest else "")
