"""Process environment for the embedded defaults, set before Prefect or TensorFlow load.

Called by the command line (and by a flow run before it trains), never at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.run_owner import owner_gone, owner_tags

# Quiet, offline-friendly defaults the user can still override from the environment.
_DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # A fresh ephemeral database needs more than Prefect's default 20 s on two cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    # MLflow's INFO lines ("Creating initial MLflow database tables...", "Validating input
    # example...") and its download progress bars are not the run's progress.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # With a tracking server MLflow writes "🏃 View run ... at: URL" to stdout for every run it
    # ends; the summary names the run and the UI once.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # Fail fast on a dead tracking server: Prefect's task retries add the back-off on top,
    # MLflow's own defaults (7 retries, up to 120 s each) would hang a run for many minutes.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "GIT_PYTHON_REFRESH": "quiet",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}

# Loggers that print start-up chatter at INFO (MLflow's database migrations run alembic).
_QUIET_LOGGERS = ("alembic", "mlflow", "absl")

# What TensorFlow's C++ side writes to fd 2 while it loads, before TF_CPP_MIN_LOG_LEVEL is
# read: absl's "before InitializeLog" notice, INFO/WARNING lines in glog format (oneDNN,
# "Could not find cuda drivers", CPU feature notes) and the cuInit error of a machine
# without a GPU. Anything else written meanwhile is passed through.
_TF_STARTUP = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog"
    r"|[IW]\d{4} [\d:. ]+\d+ \S+:\d+\]"
    r"|E\d{4} [\d:. ]+\d+ cuda_\w+\.cc:\d+\] failed call to cuInit"
    r"|To enable the following instructions: )"
)


# fd 2 is process-wide: two threads filtering it at once would restore each other's sink.
_TF_LOCK = threading.Lock()


def configure_environment(settings: Settings) -> None:
    """Keep Prefect's home inside the project and apply the quiet defaults."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(Path(settings.base_dir) / ".prefect"))
    # A ticker such as 平安银行 in a plot title: without a CJK font installed matplotlib draws
    # boxes and warns once per glyph, on the console, in the middle of the run's progress.
    warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from font", UserWarning)
    # pandas silences this one inside its holiday rules (exchange_calendars' sessions) with
    # catch_warnings, which is not thread-safe: tickers trained in threads let it through
    warnings.filterwarnings("ignore", "Non-vectorized DateOffset")  # pandas PerformanceWarning
    if settings.runtime.prefect_api_url:
        os.environ["PREFECT_API_URL"] = settings.runtime.prefect_api_url
    quiet_loggers()


class _NoUserErrors(logging.Filter):
    """Drops Prefect's ERROR records (with tracebacks) of a flow or task that ended in a user
    error: the CLI prints that error once, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pipelines.errors import is_user_error

        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return not is_user_error(exc)
        # "Finished in state Failed('Task run encountered an exception InputError: ...')"
        named = re.search(r"exception (\w+):|: (\w+)\(", record.getMessage())
        return named is None or next(n for n in named.groups() if n) not in _user_error_names()


def _user_error_names() -> set[str]:
    from pipelines.errors import user_error_types

    todo, names = list(user_error_types()), set()
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


class _NoInterruptCrash(logging.Filter):
    """Drops Prefect's records of a flow or task run crashing on Ctrl-C ("Crash detected!
    Execution was aborted by an interrupt signal.", "Finished in state Crashed(...)"): the
    CLI prints `interrupted` once instead.

    Prefect logs them while it handles the KeyboardInterrupt, so the exception being handled
    tells them apart whatever their wording.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        handled = (record.exc_info or (None, None, None))[1], sys.exc_info()[1]
        return not any(cut_by_interrupt(exc) for exc in handled)


def cut_by_interrupt(exc: BaseException | None) -> bool:
    """Whether `exc` is a KeyboardInterrupt or was raised while one was handled (MLflow's
    "database is locked" as Ctrl-C cut its write short)."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _NoCancelledReset(logging.Filter):
    """Drops the pool's "Exception during reset or similar" of a connection whose rollback
    was cancelled: the in-process Prefect API's database, torn down as a command ends (seen
    after a command's one-line error, as a 20-line traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


# The logger of the pool of the in-process Prefect API's database (aiosqlite)
_API_POOL_LOGGER = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"
_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
# MLflow logs the database error of a write that Ctrl-C cut short, with its traceback.
_INTERRUPTED_LOGGERS = (*_RUN_LOGGERS, "mlflow.store.db.utils")


def quiet_loggers() -> None:
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # urllib3 warns at each of MLflow's HTTP retries ("Retrying (Retry(total=1, ...)) after
    # connection broken"): a server that stopped answering is one line (tracking.ServerStopped)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    for name in _RUN_LOGGERS:
        _add_filter(logging.getLogger(name), _NoUserErrors)
    _add_filter(logging.getLogger(_API_POOL_LOGGER), _NoCancelledReset)


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged (main may run again, redirected)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def progress_logging() -> None:
    """Step and epoch progress on stderr (the CLI, a served run, a tuning worker); Prefect's own
    chatter stays at WARNING."""
    logger = logging.getLogger("pipelines")
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def quiet_interrupts() -> None:
    """Keep Prefect's crash lines of a Ctrl-C, and MLflow's error of a write it cut short,
    off the console (the command line's and its tuning workers' only: a served run's crash
    stays in its logs)."""
    for name in _INTERRUPTED_LOGGERS:
        _add_filter(logging.getLogger(name), _NoInterruptCrash)


def _add_filter(logger: logging.Logger, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


@contextlib.contextmanager
def _filtered_fd2(drop: re.Pattern[str]) -> Iterator[None]:
    """Capture what C/C++ code writes to file descriptor 2; replay all but `drop`'s lines."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured by pytest)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not drop.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def quiet_tensorflow() -> None:
    """Load TensorFlow (and look for devices) without its C++ start-up lines.

    A no-op once TensorFlow is loaded. Call before the first step that uses Keras.
    """
    with _TF_LOCK:
        if "tensorflow" in sys.modules:
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _DEFAULTS["TF_CPP_MIN_LOG_LEVEL"])
        with _filtered_fd2(_TF_STARTUP):
            import tensorflow as tf

            tf.config.list_physical_devices()  # the cuInit attempt happens here, not mid-run
            tf.get_logger().setLevel("ERROR")


class PrefectAPI:
    """Prefect's temporary API server starting in a thread of its own, or none to start.

    :meth:`wait` returns once the server answers, raising what its start raised.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _start(self) -> None:
        from prefect import get_client

        # The server, a child of this thread, inherits its signal mask: the terminal's
        # Ctrl-C leaves it running. The main thread keeps SIGINT (Ctrl-C stays `interrupted`).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with get_client(sync_client=True):  # the first client starts the server
                pass
        except BaseException as exc:  # raised in the main thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until the server answers (before the first flow run); re-raise its error."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error


def prefect_server_url() -> str | None:
    """The Prefect API this process is pointed at (environment, configuration or Prefect
    profile); None: its flow runs go to a temporary local API that stops with it, and events
    it emits reach no deployment. Prefect's settings (a heavy import, for its profile) are
    read only when the environment, where configure_environment puts
    runtime.prefect_api_url, names none."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def require_prefect_api(url: str) -> None:
    """One quick request to a configured Prefect API's /health: a server that is down is one
    line before any flow runs, not Prefect's retries and then a traceback. (`serve` waits
    for it to come back instead.)"""
    from pipelines.errors import PipelineError
    from pipelines.servers.process import no_answer_from

    url = url.rstrip("/")
    reason = no_answer_from(f"{url}/health", timeout=5)
    if reason:
        raise PipelineError(
            f"Prefect API {url} does not answer ({reason}): start it (prefect server start "
            "--host 127.0.0.1), or unset PREFECT_API_URL (and runtime.prefect_api_url) to run "
            "with a temporary local API"
        )


def start_prefect_api(settings: Settings) -> PrefectAPI:
    """Start Prefect's temporary API server (which the first flow run would start) in a
    thread, sparing it the terminal's Ctrl-C; call `wait()` on the result before a flow runs.

    The caller imports TensorFlow and the flows meanwhile: the server boots in a process of
    its own. Ctrl-C signals the terminal's whole process group, and Prefect starts that server
    as a child process in it: the server stopped at once, and the interrupted run, unable to
    record its end, kept retrying before it failed with a traceback. A child inherits the
    signal mask of the thread that starts it, so that thread blocks SIGINT; Prefect stops the
    server with SIGTERM when the process exits. The thread is a daemon: a command that ends
    before the server answers (Ctrl-C, an error) does not wait for it. A configured API, or
    the Dask fan-out's server (its own process group), needs none of this. A server whose
    command was killed outright is stopped here by the next command
    (:func:`stop_orphaned_servers`).
    """
    served = prefect_server_url()
    if served:
        require_prefect_api(served)
    api = PrefectAPI()
    if served or settings.runtime.task_runner == "dask" or not hasattr(signal, "pthread_sigmask"):
        return api
    from prefect.server.api.server import SubprocessASGIServer  # what get_client starts

    stop_orphaned_servers()
    server = SubprocessASGIServer()  # one per process: the thread's get_client starts it
    # The server's environment names this process as its owner (stop_orphaned_servers).
    # Prefect builds that environment from os.environ alone, so the variable is set here
    # until the server's process exists, while this thread only waits for it.
    os.environ[_SERVER_OWNER] = json.dumps(owner_tags())
    try:
        # the thread sees the Prefect settings this thread does
        context = contextvars.copy_context()
        api._thread = threading.Thread(
            target=context.run, args=(api._start,), name="prefect-api-start", daemon=True
        )
        api._thread.start()
        # Until then, fd 2 stays as it is: the server inherits it, and quiet_tensorflow
        # points it at a temporary file while TensorFlow loads.
        while server.server_process is None and api._thread.is_alive():
            time.sleep(0.01)
    finally:
        os.environ.pop(_SERVER_OWNER, None)
    if not api._thread.is_alive():  # failed before its process started: say so now
        api.wait()
    return api


_SERVER_OWNER = "LSTM_PIPELINE_SERVER_OWNER"
_SERVER_APP = b"prefect.server.api.server:create_app"


def stop_orphaned_servers() -> list[int]:
    """Stop (SIGTERM) Prefect's temporary API servers of this PREFECT_HOME whose owner, the
    command that started them, has ended; returns their pids.

    Prefect stops its server when the process exits normally; a process killed outright
    (SIGKILL, the OOM killer, a timeout) leaves it running for good. Only servers started by
    `start_prefect_api` carry an owner, so a server started otherwise is never touched.
    """
    home = os.path.realpath(os.environ.get("PREFECT_HOME", ""))
    stopped = []
    for entry in Path("/proc").glob("[0-9]*"):  # no /proc (not Linux): nothing found
        try:
            if _SERVER_APP not in (entry / "cmdline").read_bytes():
                continue
            pairs = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile, or another user's
            continue
        env = dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)
        owner = env.get(_SERVER_OWNER)
        if (
            owner is None
            or env.get("PREFECT__SERVER_EPHEMERAL") != "1"
            or os.path.realpath(env.get("PREFECT_HOME", "")) != home
        ):
            continue
        try:
            reason = owner_gone(json.loads(owner))
        except (ValueError, AttributeError):  # not what start_prefect_api wrote
            continue
        if reason is None:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry.name), signal.SIGTERM)
            stopped.append(int(entry.name))
            logging.getLogger("pipelines").info(
                "stopped Prefect's temporary server (pid %s) left running: %s", entry.name, reason
            )
    return stopped
