"""Live monitoring's MLflow side (the scoring itself is :mod:`pipelines.monitoring`): one
monitoring run per champion version holding the live series, and `live.*` version tags."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from pipelines.config import Settings
from pipelines.run_owner import owner_tags
from pipelines.tracking.connection import _client, connect
from pipelines.tracking.registry import get_version, tag_version
from pipelines.tracking.runs import TAG_KIND, TAG_TICKER

KIND_MONITORING = "monitoring"


def monitoring_run(settings: Settings, ticker: str, version: str) -> str:
    """The one monitoring run of a ticker's champion version (`live MSFT v3`), made once."""
    experiment_id = connect(settings)
    client = _client()
    found = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.{TAG_KIND} = '{KIND_MONITORING}' and tags.{TAG_TICKER} = '{ticker}' "
            f"and tags.model_version = '{version}'"
        ),
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"live {ticker} v{version}",
        tags={
            TAG_TICKER: ticker,
            TAG_KIND: KIND_MONITORING,
            "model_version": version,
            "model_name": settings.registry.name_for(ticker),
            **owner_tags(),
        },
    )
    return run.info.run_id


def log_live_series(run_id: str, series: pd.DataFrame) -> int:
    """Log each row of `series` (step, target_date, metrics) once; returns points added.

    The step is trading days since deployment and the timestamp the target date, so a
    re-scoring finds its steps already logged and adds nothing.
    """
    from mlflow.entities import Metric

    client = _client()
    keys = [c for c in series.columns if c not in ("step", "target_date")]
    batch = []
    for key in keys:
        done = {m.step for m in client.get_metric_history(run_id, key)}
        for row in series.itertuples(index=False):
            value = float(getattr(row, key))
            if row.step in done or math.isnan(value):
                continue
            stamp = int(pd.Timestamp(row.target_date).timestamp() * 1000)
            batch.append(Metric(key, value, stamp, int(row.step)))
    for i in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[i : i + 500])
    return len(batch)


def tag_live(name: str, version: str, figures: Mapping[str, float], through: str) -> None:
    """Version tags `live.rmse`, `live.skill_vs_naive`, `live.coverage_<L>`, ... (latest)."""
    tags = {f"live.{k.removeprefix('live_')}": f"{v:.6g}" for k, v in figures.items()}
    tag_version(name, version, {**tags, "live.scored_through": through})


def live_tags(name: str, version: str) -> dict[str, str]:
    return {k: v for k, v in get_version(name, version).tags.items() if k.startswith("live.")}
