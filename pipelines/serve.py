"""`lstm-pipeline serve`: long-running Prefect deployments of retraining and forecasting."""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from typing import Any

from pipelines.config import Settings

log = logging.getLogger("pipelines")

RETRAIN_DEPLOYMENT = "scheduled-retraining"
FORECAST_DEPLOYMENT = "batch-forecast"
TUNING_DEPLOYMENT = "scheduled-tuning"  # only with tuning.cron set


def deployments(
    settings: Settings,
    config_path: str,
    overrides: list[str] | None = None,
    tickers: list[str] | None = None,
) -> list:
    """The retraining deployment (cron + new prices + a degraded champion) and the forecast one.

    Each trigger passes `trigger` (cron | new_data | degraded), which the retrained versions'
    runs record as `retrain.trigger`.
    """
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from pipelines.flows import forecast_flow, retraining_flow

    params = {"config_path": config_path, "overrides": list(overrides or [])}
    retrain = retraining_flow.to_deployment(
        name=RETRAIN_DEPLOYMENT,
        schedules=[
            Cron(
                settings.schedule.cron,
                timezone=settings.schedule.timezone,
                parameters={**params, "trigger": "cron"},
            )
        ],
        parameters=params,
        triggers=[
            # Ingestion emits this event when a ticker gains rows: retrain without waiting.
            DeploymentEventTrigger(
                name="new-prices",
                expect={settings.schedule.event},
                match={"prefect.resource.id": "lstm.ticker.*"},
                parameters={**params, "trigger": "new_data"},
            ),
            # Scoring emits this when a champion decays: retrain it even without new rows.
            DeploymentEventTrigger(
                name="degraded-champion",
                expect={settings.monitoring.event},
                match={"prefect.resource.id": "lstm.ticker.*"},
                parameters={**params, "trigger": "degraded"},
            ),
        ],
        description="Ingest new price files and retrain tickers whose data changed.",
    )
    forecast = forecast_flow.to_deployment(
        name=FORECAST_DEPLOYMENT,
        parameters={**params, "tickers": tickers},
        description="Forecast the next trading days from each ticker's champion.",
    )
    if settings.tuning.cron is None:
        return [retrain, forecast]
    from pipelines.flows.tuning import tuning_flow

    tune = tuning_flow.to_deployment(
        name=TUNING_DEPLOYMENT,
        schedules=[Cron(settings.tuning.cron, timezone=settings.schedule.timezone)],
        parameters={**params, "tickers": tickers},
        description="Search hyperparameters, retrain the best configuration, decide promotion.",
    )
    return [retrain, forecast, tune]


BUSY_RETRIES = 5


def _service_unavailable(exc: BaseException | None) -> bool:
    """Whether an HTTP 503 answer is anywhere in ``exc``'s chain of causes."""
    while exc is not None:
        if getattr(getattr(exc, "response", None), "status_code", None) == 503:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# What Prefect's runner raises when its polls for scheduled runs keep failing.
_GAVE_UP = "Service exceeded error threshold."


def _runner_gave_up(exc: BaseException | None) -> bool:
    """Whether ``exc`` (chained, or in the runner's exception groups) is the runner giving up."""
    if exc is None:
        return False
    if isinstance(exc, RuntimeError) and str(exc) == _GAVE_UP:
        return True
    inner = getattr(exc, "exceptions", ())  # an ExceptionGroup of its task groups
    return any(_runner_gave_up(e) for e in (*inner, exc.__cause__ or exc.__context__))


def _api_healthy() -> bool:
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.api_healthcheck() is None
    except Exception:
        return False


def exit_after_interrupt(grace: float = 20.0) -> Any:
    """Make SIGINT (Ctrl-C) end this process: normally, or at the latest ``grace`` s later.

    Prefect's runner can lose the cancellation that asyncio turns a Ctrl-C into when it lands
    in a shielded section (seen right after a served run had finished: serve kept serving).
    Here SIGINT raises KeyboardInterrupt directly, as Python does by default, and also arms
    a timer that ends the process (exit code 130) if the shutdown stalls. Nothing needs
    cleaning up on the way out: schedules stay active and runs are recorded by the server.
    Returns the SIGINT handler it replaced.
    """

    def on_sigint(signum: int, frame: object) -> None:
        timer = threading.Timer(grace, os._exit, args=(130,))
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    # A handler of our own also keeps asyncio.run from installing its cancel-only one.
    return signal.signal(signal.SIGINT, on_sigint)


def serve(
    settings: Settings,
    config_path: str,
    overrides: list[str] | None = None,
    tickers: list[str] | None = None,
    retry_seconds: float = 5.0,
) -> None:
    """Serve until Ctrl-C; schedules stay active afterwards (no paused deployment left).

    Prefect's runner gives up after three failed polls (a few minutes without its API); a
    server restart or upgrade must not end the schedule, so serving starts again, with the
    same deployments, once the API answers.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = exit_after_interrupt() if in_main else None
    outage.down = False  # an earlier serve may have ended in an outage: this one says its own
    _events_stream_in_one_line()
    _polls_report_in_one_line()
    try:
        _serve_until_stopped(settings, config_path, overrides, tickers, retry_seconds)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def _serve_until_stopped(
    settings: Settings,
    config_path: str,
    overrides: list[str] | None,
    tickers: list[str] | None,
    retry_seconds: float,
) -> None:
    from prefect import serve as prefect_serve

    busy_retries = 0
    banner = True  # Prefect's "Your deployments are being served" box, once
    while True:
        try:
            prefect_serve(
                *deployments(settings, config_path, overrides, tickers),
                pause_on_shutdown=False,
                print_starting_message=banner,
            )
            return
        except Exception as exc:
            if _runner_gave_up(exc):
                # It was serving (its box is on the console) until its polls failed. The
                # API may answer again by now: serve again either way, never end here.
                banner = False
            elif _api_healthy():
                # A 503 from a live server is a busy database (seen in CI: creating the
                # deployments right after the server started): retry a few times.
                busy_retries += 1
                if not _service_unavailable(exc) or busy_retries > BUSY_RETRIES:
                    raise
                log.warning("Prefect API busy (%s); serving again in %.0f s", exc, retry_seconds)
                time.sleep(retry_seconds)
                continue
            outage.gone(str(exc))
            while not _api_healthy():
                time.sleep(retry_seconds)
            outage.back()


class _Outage:
    """Says once that the Prefect API went away and once that it is back, whichever part of
    the runner noticed first (its events stream breaks at once, its polls give up later).

    Back is said when the API answers again: the runner's events stream, which says so too,
    reconnects with a backoff of up to minutes after a long outage."""

    every = 5.0  # s between two looks at the API while it is down

    def __init__(self) -> None:
        self.down = False
        self._lock = threading.Lock()
        self.log = log  # where its two lines go

    def gone(self, reason: str) -> None:
        with self._lock:
            if self.down:
                return
            self.down = True
        self.log.warning("Prefect API unreachable (%s); serving again once it answers", reason)
        threading.Thread(target=self._watch, name="prefect-api-watch", daemon=True).start()

    def _watch(self) -> None:
        while self.down and not _api_healthy():
            time.sleep(self.every)
        self.back()

    def back(self) -> None:
        with self._lock:
            if not self.down:
                return
            self.down = False
        self.log.warning("Prefect API is back: serving the deployments again")


outage = _Outage()
# The runner's watch for cancelled runs: it follows the API's events stream (a websocket).
_OBSERVER_LOGGER = "prefect.FlowRunCancellingObserver"


class _EventsStream(logging.Filter):
    """The runner's lines about its events stream, as `serve`'s own lines.

    When the API goes away (a server restart) the stream breaks, and Prefect logs a WARNING
    with a chained traceback of the websocket's errors, then nothing while the API is down
    nor once it is back. Here: one line for the outage and one when the stream is back
    (`outage`; Prefect's INFO line, let through for this, says so), and any other of its
    records with a traceback in one line. Its other records show as Prefect's level has it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Switching to polling" in message:  # the stream broke or closed
            exc = record.exc_info[1] if record.exc_info else None
            outage.gone(_reason(exc) if exc else "its events stream closed")
            return False
        if "reconnected to the events stream and stopped polling" in message:
            outage.back()
            return False
        if record.exc_info and record.exc_info[1] is not None:
            log.log(record.levelno, "%s (%s)", message, _reason(record.exc_info[1]))
            return False
        return record.levelno >= logging.getLogger("prefect").getEffectiveLevel()


def _reason(exc: BaseException) -> str:
    """The last error of a chain, in words: a websocket's close, a refused connection."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _events_stream_in_one_line() -> None:
    from prefect.logging import get_logger  # Prefect's logging configured first

    logger = get_logger(_OBSERVER_LOGGER)
    if not any(isinstance(f, _EventsStream) for f in logger.filters):
        logger.addFilter(_EventsStream())
    # INFO for its line that the stream is back (lower when Prefect's level is lower)
    logger.setLevel(min(logging.INFO, logging.getLogger("prefect").getEffectiveLevel()))


# Prefect's runner logs at DEBUG that each poll failed, with its traceback.
_POLLER_LOGGER = "prefect.runner"


def _poll_report(*parts: object, **_: object) -> None:
    """Where Prefect's runner writes the report of its failed polls (instead of ``print``).

    After three failed polls in a row the runner prints "Failed the last 3 attempts", the
    tracebacks of its recent errors and then gives up (serve starts again once the API
    answers): tens of lines on stdout, after the one line that the API is unreachable. Here
    the report goes to Prefect's logger at DEBUG (PREFECT_LOGGING_LEVEL=DEBUG shows it) and
    its last error, in words, is the outage's line if nothing said the API was gone yet.
    """
    text = " ".join(str(p) for p in parts).strip()
    if not text:
        return
    if text.startswith("Traceback"):
        outage.gone(text.splitlines()[-1])
    from prefect.logging import get_logger

    get_logger(_POLLER_LOGGER).debug("%s", text)


def _polls_report_in_one_line() -> None:
    """Give the runner's loop that polls for scheduled runs `_poll_report` as its printer.

    Prefect has no setting for it: its `critical_service_loop` takes a ``printer``, which
    the runner leaves at ``print``. Only the name the poller calls is replaced, so Prefect's
    other service loops (a worker's, ...) print as before. Should Prefect move that call,
    nothing is replaced and the report is printed as it was.
    """
    try:
        from prefect.runner import _scheduled_run_poller as poller
    except ImportError:
        return
    loop = getattr(poller, "critical_service_loop", None)
    if loop is None or isinstance(loop, functools.partial):
        return
    poller.critical_service_loop = functools.partial(loop, printer=_poll_report)
