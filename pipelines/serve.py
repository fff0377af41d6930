"""`lstm-pipeline serve`: long-running Prefect deployments of retraining and forecasting."""

from __future__ import annotations

import logging
import time

from pipelines.config import Settings

log = logging.getLogger("pipelines")

RETRAIN_DEPLOYMENT = "scheduled-retraining"
FORECAST_DEPLOYMENT = "batch-forecast"


def deployments(
    settings: Settings,
    config_path: str,
    overrides: list[str] | None = None,
    tickers: list[str] | None = None,
) -> list:
    """The retraining deployment (cron + an event trigger) and the forecast deployment."""
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from pipelines.flows import forecast_flow, retraining_flow

    params = {"config_path": config_path, "overrides": list(overrides or [])}
    retrain = retraining_flow.to_deployment(
        name=RETRAIN_DEPLOYMENT,
        schedules=[Cron(settings.schedule.cron, timezone=settings.schedule.timezone)],
        parameters=params,
        triggers=[
            # Ingestion emits this event when a ticker gains rows: retrain without waiting.
            DeploymentEventTrigger(
                name="new-prices",
                expect={settings.schedule.event},
                match={"prefect.resource.id": "lstm.ticker.*"},
                parameters=params,
            )
        ],
        description="Ingest new price files and retrain tickers whose data changed.",
    )
    forecast = forecast_flow.to_deployment(
        name=FORECAST_DEPLOYMENT,
        parameters={**params, "tickers": tickers},
        description="Forecast the next trading days from each ticker's champion.",
    )
    return [retrain, forecast]


def _api_healthy() -> bool:
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.api_healthcheck() is None
    except Exception:
        return False


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
    from prefect import serve as prefect_serve

    while True:
        try:
            prefect_serve(
                *deployments(settings, config_path, overrides, tickers),
                pause_on_shutdown=False,
            )
            return
        except Exception as exc:
            if _api_healthy():
                raise
            log.warning("Prefect API unreachable (%s); serving again once it answers", exc)
            while not _api_healthy():
                time.sleep(retry_seconds)
            log.warning("Prefect API is back: serving the deployments again")
