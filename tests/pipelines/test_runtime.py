"""The command line's set-up before flow runs: Prefect's temporary API server starts in a
thread of its own while TensorFlow and the flows load."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_sigmask"), reason="the server is started apart on POSIX only"
)


@pytest.fixture
def fake_server(tmp_path, monkeypatch):
    """No API configured, a server of Prefect's yet to start, and `prefect.get_client` replaced
    by `fake_server["start"]`, a context manager factory run by the thread that starts it."""
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # the session's test harness registers its server as the process's one
    monkeypatch.setattr(SubprocessASGIServer, "_instances", {})
    box = {}
    monkeypatch.setattr(prefect, "get_client", lambda **kw: box["start"]())
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield box


def _sigint_blocked() -> bool:
    return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_tensorflow_loads_while_the_prefect_server_starts(fake_server, tiny_settings, monkeypatch):
    """The server's start ends only once TensorFlow has loaded: done one after the other, as
    before, the start gives up waiting. The server's process inherits SIGINT blocked and its
    owner; the command itself keeps its Ctrl-C and an environment without that owner."""
    from prefect.server.api.server import SubprocessASGIServer

    from pipelines import runtime
    from pipelines.cli import commands

    loaded, seen = threading.Event(), {}

    @contextlib.contextmanager
    def start():  # as Prefect's: the server's process first, then it answers
        seen["the server's process: SIGINT blocked"] = _sigint_blocked()
        seen["the server's process: owner"] = runtime._SERVER_OWNER in os.environ
        SubprocessASGIServer().server_process = object()
        seen["answers once TensorFlow has loaded"] = loaded.wait(timeout=20)
        yield None

    def quiet_tensorflow() -> None:
        seen["TensorFlow loads: SIGINT blocked"] = _sigint_blocked()
        seen["TensorFlow loads: owner in the environment"] = runtime._SERVER_OWNER in os.environ
        loaded.set()

    fake_server["start"] = start
    monkeypatch.setattr(runtime, "quiet_tensorflow", quiet_tensorflow)
    commands._before_flows(tiny_settings)
    assert seen == {
        "the server's process: SIGINT blocked": True,
        "the server's process: owner": True,
        "answers once TensorFlow has loaded": True,
        "TensorFlow loads: SIGINT blocked": False,
        "TensorFlow loads: owner in the environment": False,
    }
    assert runtime._SERVER_OWNER not in os.environ and not _sigint_blocked()


def test_a_server_that_fails_to_start_raises_its_error_in_the_command(
    fake_server, tiny_settings, monkeypatch
):
    from prefect.server.api.server import SubprocessASGIServer

    from pipelines import runtime
    from pipelines.cli import commands

    @contextlib.contextmanager
    def start():
        SubprocessASGIServer().server_process = object()
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")
        yield None

    fake_server["start"] = start
    monkeypatch.setattr(runtime, "quiet_tensorflow", lambda: None)
    with pytest.raises(RuntimeError, match="^Timed out while attempting to connect"):
        commands._before_flows(tiny_settings)
    assert runtime._SERVER_OWNER not in os.environ


@pytest.mark.parametrize("where", ["PREFECT_API_URL", "dask"])
def test_a_configured_api_or_the_dask_runner_starts_no_server(
    fake_server, tiny_project, where, monkeypatch
):
    """The CLI exports `runtime.prefect_api_url` as PREFECT_API_URL (configure_environment)."""
    from pipelines import runtime
    from pipelines.config import load_settings

    overrides = ["runtime.task_runner=dask"] if where == "dask" else []
    if where == "PREFECT_API_URL":
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    # a configured API is only asked whether it answers (the CLI test asks a real port)
    asked: list[str] = []
    monkeypatch.setattr(runtime, "require_prefect_api", asked.append)
    settings = load_settings(tiny_project / "mlflow.yaml", overrides, env={})
    started = []
    fake_server["start"] = lambda: started.append(True)
    runtime.start_prefect_api(settings).wait()
    assert started == []
    assert asked == (["http://127.0.0.1:9/api"] if where == "PREFECT_API_URL" else [])


def test_pandas_holiday_warning_stays_off_the_console_whatever_the_threads(
    tiny_settings, monkeypatch
):
    """pandas silences it in its holiday rules with catch_warnings, which threads undo: the
    process-wide filter keeps it out of a multi-ticker run's progress lines."""
    import warnings

    from pandas.errors import PerformanceWarning

    from pipelines.runtime import configure_environment

    monkeypatch.setattr(os, "environ", os.environ.copy())  # it sets Prefect's defaults
    message = "Non-vectorized DateOffset being applied to Series or DatetimeIndex."
    with warnings.catch_warnings(record=True) as seen:  # restores the filters after
        configure_environment(tiny_settings)
        warnings.warn_explicit(message, PerformanceWarning, "exchange_calendar.py", 755)
    assert [str(w.message) for w in seen] == []


def test_a_cancelled_reset_in_the_api_databases_pool_stays_off_the_console():
    """As a command ends, the in-process Prefect API's pool can log a rollback that the
    shutdown cancelled, with its traceback, after the command's one line (seen in CI)."""
    import asyncio
    import logging

    from sqlalchemy.pool import AsyncAdaptedQueuePool

    from pipelines.runtime import quiet_loggers

    quiet_loggers()
    pool = AsyncAdaptedQueuePool(lambda: None)
    seen: list[logging.LogRecord] = []
    catch = logging.Handler()
    catch.emit = seen.append
    logging.getLogger().addHandler(catch)
    try:
        for exc in (asyncio.CancelledError(), OSError("disk I/O error")):
            try:
                raise exc
            except BaseException:
                pool.logger.error("Exception during reset or similar", exc_info=True)
    finally:
        logging.getLogger().removeHandler(catch)
    assert [type(r.exc_info[1]) for r in seen] == [OSError]  # other errors still shown
