"""Prefect flows, one module per flow: training, retraining, forecast and tuning
(:mod:`pipelines.flows.tuning`, imported on its own: it loads Optuna). The scoring flow lives with
the live monitoring in :mod:`pipelines.monitoring`."""

from pipelines.flows.common import Summary, TickerResult, emit_updated, resolve_settings
from pipelines.flows.fanout import fan_out
from pipelines.flows.forecast import ForecastResult, forecast_flow, forecast_one
from pipelines.flows.retraining import needs_training, retraining_flow
from pipelines.flows.training import promote, train_one, training_flow

__all__ = [
    "ForecastResult",
    "Summary",
    "TickerResult",
    "emit_updated",
    "fan_out",
    "forecast_flow",
    "forecast_one",
    "needs_training",
    "promote",
    "resolve_settings",
    "retraining_flow",
    "train_one",
    "training_flow",
]
