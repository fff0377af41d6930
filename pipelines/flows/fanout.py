"""Fan-out: the tickers of one flow run on Dask workers instead of Prefect's thread pool."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipelines.config import Settings

log = logging.getLogger("pipelines")


def _task_runner(settings: Settings):
    """None (Prefect's default thread pool) or a DaskTaskRunner for `runtime.task_runner: dask`.

    Each ticker branch (`train_ticker` or `retrain_ticker`, which call the other tasks
    inline) runs in one Dask worker process; a local cluster gets `runtime.dask_workers`
    single-threaded worker processes on 127.0.0.1, `runtime.dask_address` an existing
    scheduler instead. The workers' progress lines reach this process's console
    (`ProgressDaskTaskRunner`).
    """
    if settings.runtime.task_runner != "dask":
        return None
    from pipelines.flows.dask_runner import ProgressDaskTaskRunner

    if settings.runtime.dask_address:
        return ProgressDaskTaskRunner(address=settings.runtime.dask_address)
    return ProgressDaskTaskRunner(
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
