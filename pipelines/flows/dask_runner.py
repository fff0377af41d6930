"""The Dask task runner of the fan-out, with the run's progress lines on the user's console.

Imported only when `runtime.task_runner: dask` (it loads Dask and prefect-dask).
"""

from __future__ import annotations

import logging
from typing import Any

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin
from prefect_dask import DaskTaskRunner

PROGRESS_LOGGER = "pipelines"


class _ProgressLevel(WorkerPlugin):
    """Lets a worker's progress records (INFO) reach the forwarding handler.

    A worker process never runs `runtime.progress_logging`: its "pipelines" logger
    inherits the root's WARNING and drops the steps' lines before any handler sees them. Not
    propagated: the forwarded copy is the one the user reads (a local worker's own stderr is
    the terminal too, in Prefect's format).
    """

    idempotent = True

    def setup(self, worker: Any) -> None:
        logger = logging.getLogger(PROGRESS_LOGGER)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class ProgressDaskTaskRunner(DaskTaskRunner):
    """A DaskTaskRunner whose workers' progress lines ("A: 120 rows ...", epochs, evaluation,
    logging) are forwarded to this process's "pipelines" logger, which prints them as the
    thread runner's are, and whose local cluster shuts down without Dask's kill warnings.

    Prefect runs a flow with `duplicate()` of the runner it was given, which keeps this class.
    """

    @property
    def client(self) -> Client:
        client = super().client  # made on first use
        if not getattr(self, "_progress_forwarded", False):  # the plugin reaches later workers too
            client.register_plugin(_ProgressLevel(), name="lstm-progress-level")
            client.forward_logging(PROGRESS_LOGGER, logging.INFO)
            self._progress_forwarded = True
        return client

    def __exit__(self, *exc: Any) -> None:
        # Closing the local cluster, each nanny gives its worker 4 s to end, then kills it
        # with the WARNING "Worker process still alive after 4.0 seconds, killing". Here the
        # kill is harmless: by then the worker has finished its tasks and closed its
        # connections (seen: its close-stream reaches the scheduler within milliseconds),
        # and only its interpreter's teardown of TensorFlow's and Keras's objects is left
        # (seen: main thread busy in libpython, no Python frame). Waiting longer would only
        # slow every fan-out run down, so that logger alone is lowered, for the shutdown.
        nanny = logging.getLogger("distributed.nanny")
        level = nanny.level
        nanny.setLevel(logging.ERROR)
        try:
            super().__exit__(*exc)
        finally:
            nanny.setLevel(level)
